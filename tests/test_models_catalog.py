"""The model picker's list: what the Hugging Face cache and the model folders hold.

Models are placed in a temporary Hugging Face cache layout by hand (tests/hub_server.py's
``place_in_hf_cache``), as huggingface_hub would have left them, and in plain folders.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hub_server import place_in_hf_cache

from engine import ModelLoaded
from models.catalog import filter_models, scan_models
from models.model_facts import describe_model
from workbench import recent

BIG = 1 << 40  # "plenty of memory free"


@pytest.fixture
def hf_cache(tmp_path, demo_kit):
    cache = tmp_path / "hub"
    place_in_hf_cache(cache, "demo/llama", demo_kit.llama)
    place_in_hf_cache(cache, "demo/qwen3-4bit", demo_kit.qwen3_4bit)
    # Things that are not loadable models: a tokenizer-only repo, an architecture mlx-lm
    # does not have, and a dataset.
    tok_only = tmp_path / "tok"
    tok_only.mkdir()
    shutil.copy(demo_kit.llama / "tokenizer.json", tok_only)
    place_in_hf_cache(cache, "demo/tokenizer-only", tok_only)
    alien = tmp_path / "alien"
    shutil.copytree(demo_kit.llama, alien)
    cfg = json.loads((alien / "config.json").read_text())
    (alien / "config.json").write_text(json.dumps({**cfg, "model_type": "not_a_real_arch"}))
    place_in_hf_cache(cache, "demo/alien", alien)
    place_in_hf_cache(cache, "demo/a-dataset", demo_kit.llama)
    (cache / "models--demo--a-dataset").rename(cache / "datasets--demo--a-dataset")
    return cache


def test_scan_finds_the_models_in_a_hugging_face_cache(hf_cache):
    entries = scan_models(cache_dir=hf_cache, available=BIG)

    assert [e.name for e in entries] == ["demo/llama", "demo/qwen3-4bit"]
    llama, qwen = entries
    assert llama.source == "hf-cache" and llama.repo_id == "demo/llama"
    assert llama.path.parent.name == "snapshots" and (llama.path / "config.json").exists()
    assert (llama.architecture, qwen.architecture) == ("llama", "qwen3")
    assert llama.quant_bits is None and llama.bits_per_weight == 32.0
    assert (qwen.quant_bits, qwen.group_size) == (4, 64) and 4 < qwen.bits_per_weight < 6
    assert llama.size_on_disk > 5 * qwen.size_on_disk
    assert llama.context_length == 4096 and llama.fit == "fits"


def test_scan_says_why_the_others_cannot_be_loaded(hf_cache):
    entries = {e.name: e for e in scan_models(cache_dir=hf_cache, available=BIG,
                                                include_unsupported=True)}
    assert "demo/tokenizer-only" not in entries  # not a model at all
    assert "demo/a-dataset" not in entries
    alien = entries["demo/alien"]
    assert not alien.supported and "cannot run not_a_real_arch" in alien.problem
    assert entries["demo/llama"].supported and entries["demo/llama"].problem == ""


def test_listed_facts_match_what_loading_reports(hf_cache, engine):
    """The picker's parameters, bits and context are what the loaded model shows."""
    for entry in scan_models(cache_dir=hf_cache, available=BIG):
        final = engine.load(str(entry.path)).wait(120)
        assert isinstance(final, ModelLoaded), final
        info = final.info
        assert info.name == entry.name
        assert info.num_parameters == entry.num_parameters
        assert info.bits_per_weight == pytest.approx(entry.bits_per_weight, abs=0.01)
        assert info.context_length == entry.context_length
        assert info.weight_bytes == entry.weight_bytes


def test_folders_recent_first_and_filter(demo_kit, tmp_path):
    entries = scan_models([demo_kit.root], include_cache=False, available=BIG,
                          recent=[str(demo_kit.qwen3_4bit), str(demo_kit.llama)])
    names = [e.name for e in entries]
    # Adapters are not models; the kit's chat demo is one (a llama), and so is the
    # reasoning demo (a qwen3).
    assert names == ["qwen3-4bit", "llama", "demo-chat", "llama-4bit", "qwen3", "qwen3-think"]
    assert [e.recent_rank for e in entries] == [0, 1, None, None, None, None]
    assert all(e.is_demo and e.source == "folder" for e in entries)
    assert [e.name for e in filter_models(entries, "QWEN 4bit")] == ["qwen3-4bit"]
    assert [e.name for e in filter_models(entries, "think")] == ["qwen3-think"]
    assert [e.name for e in filter_models(entries, "llama")] == ["llama", "demo-chat",
                                                                  "llama-4bit"]
    assert filter_models(entries, "mistral") == []


def test_a_recently_used_folder_is_listed_even_outside_the_scanned_folders(demo_kit):
    entries = scan_models([], include_cache=False, available=BIG,
                          recent=[str(demo_kit.llama_4bit), "demo/not-cached"])
    assert [(e.name, e.source, e.recent_rank) for e in entries] == [
        ("llama-4bit", "recent", 0)]


def test_fit_compares_need_with_free_memory(demo_kit):
    (small,) = scan_models([demo_kit.llama_4bit], include_cache=False, available=BIG)
    (refused,) = scan_models([demo_kit.llama_4bit], include_cache=False,
                             available=small.need_bytes - 1)
    (tight,) = scan_models([demo_kit.llama_4bit], include_cache=False,
                           available=small.need_bytes + 1)
    assert (small.fit, refused.fit, tight.fit) == ("fits", "too-big", "tight")
    assert small.need_bytes > small.weight_bytes  # the KV cache and overhead count too


def test_incomplete_or_damaged_models_are_not_offered(demo_kit, tmp_path):
    sharded = tmp_path / "models" / "sharded"
    shutil.copytree(demo_kit.llama, sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "model-00002-of-00002.safetensors" for k in index["weight_map"]}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    broken = tmp_path / "models" / "broken"
    shutil.copytree(demo_kit.llama, broken)
    (broken / "model.safetensors").write_bytes(b"\xff" * 16)

    assert scan_models([tmp_path / "models"], include_cache=False, available=BIG) == []
    entries = {e.name: e for e in scan_models([tmp_path / "models"], include_cache=False,
                                              available=BIG, include_unsupported=True)}
    assert "incomplete" in entries["sharded"].problem
    assert "damaged" in entries["broken"].problem


def test_describe_reads_only_headers(demo_kit, tmp_path):
    """Facts come from config.json and the safetensors header: the tensor data is not read."""
    folder = tmp_path / "headers-only"
    shutil.copytree(demo_kit.llama_4bit, folder)
    weights = folder / "model.safetensors"
    full = weights.read_bytes()
    header_len = 8 + int.from_bytes(full[:8], "little")
    # Same size, but every tensor byte replaced: facts must not change.
    weights.write_bytes(full[:header_len] + b"\0" * (len(full) - header_len))
    assert describe_model(folder) == describe_model(demo_kit.llama_4bit)


def test_recent_models_store(tmp_path, demo_kit):
    assert recent.recent_models() == []
    recent.remember_model(str(demo_kit.llama), when=1.0)
    recent.remember_model("mlx-community/Qwen3-0.6B-4bit", when=2.0)
    recent.remember_model(str(demo_kit.llama), when=3.0)  # used again: back to the top
    assert [(r.spec, r.name) for r in recent.recent_models()] == [
        (str(demo_kit.llama.resolve()), "llama"),
        ("mlx-community/Qwen3-0.6B-4bit", "mlx-community/Qwen3-0.6B-4bit")]

    extra = tmp_path / "more-models"
    recent.add_model_folder(extra)
    recent.add_model_folder(extra)
    assert recent.model_folders()[1:] == [extra.resolve()]
    assert recent.remove_model_folder(extra) and not recent.remove_model_folder(extra)

    recent.store_file().write_text("{ not json")
    memory = recent.load()
    assert memory.recent == () and "cannot be read" in memory.problems[0]
    recent.remember_model("a/b")  # a damaged list is replaced, not fatal
    assert [r.spec for r in recent.recent_models()] == ["a/b"]


def test_scan_of_a_missing_cache_or_folder_is_empty(tmp_path):
    assert scan_models([tmp_path / "nope"], cache_dir=tmp_path / "no-cache") == []


def test_size_on_disk_counts_cache_blobs(hf_cache):
    (llama, _) = scan_models(cache_dir=hf_cache, available=BIG)
    blobs = hf_cache / "models--demo--llama" / "blobs"
    assert llama.size_on_disk == sum(p.stat().st_size for p in Path(blobs).iterdir())
