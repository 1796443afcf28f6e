"""Broken, foreign and mislabelled adapters: one clear line each, and nothing else changes.

After a refused adapter the previous one is still active and the conversation's cache is
intact: the next reply reuses it and equals a fresh load with the previous adapter.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from adapter_fixtures import chat_turn, edit_config, edit_tensors, reference_tokens, result, use

from engine import Engine, Error, ModelLoaded, Notice
from engine.adapters import AdapterInfo, discover_adapters, inspect_adapter


@pytest.fixture(scope="module")
def other_models(demo_kit, tmp_path_factory):
    """Adapters made for two models that are not the llama demo: a narrower one (128 wide)
    and a deeper one (6 layers)."""
    from models.demo import ADAPTERS, DemoSpec, build_adapter, build_model

    root = tmp_path_factory.mktemp("other-models")
    narrow = build_model(root / "narrow", DemoSpec("narrow", "llama", hidden_size=128,
                                                   intermediate_size=256, seed=7))
    deep = build_model(root / "deep", DemoSpec("deep", "llama", num_hidden_layers=6, seed=8))
    tone_a = next(a for a in ADAPTERS if a.name == "tone-a")
    return {
        "narrow": build_adapter(narrow, root / "adapters" / "narrow-a", tone_a),
        "deep": build_adapter(deep, root / "adapters" / "deep-a", tone_a),
        "deep-all": edit_config(build_adapter(deep, root / "adapters" / "deep-b", tone_a),
                                root / "adapters" / "deep-all", num_layers=6),
    }


def _wrong_shape(tensors: dict[str, np.ndarray]) -> None:
    name = "model.layers.3.self_attn.q_proj.lora_a"
    tensors[name] = np.zeros((200, 4), dtype=np.float32)


def _truncate(path: Path) -> Path:
    weights = path / "adapters.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return path


def _garbage(path: Path) -> Path:
    (path / "adapters.safetensors").write_bytes(os.urandom(4096))
    return path


def _drop(path: Path, name: str) -> Path:
    (path / name).unlink()
    return path


def _rank(path: Path, rank: int) -> Path:
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["lora_parameters"]["rank"] = rank
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


def _bad_json(path: Path) -> Path:
    (path / "adapter_config.json").write_text('{"fine_tune_type": "lora", ')
    return path


def make_case(case: str, kit, other: dict[str, Path], tmp: Path) -> Path:
    a = kit.adapter("tone-a")
    copy = tmp / case
    builders = {
        "wrong-shapes": lambda: edit_tensors(a, copy, _wrong_shape),
        "narrow-model": lambda: other["narrow"],
        "deeper-model": lambda: other["deep"],
        "more-layers": lambda: other["deep-all"],
        "no-weights": lambda: _drop(Path(shutil.copytree(a, copy)), "adapters.safetensors"),
        "no-config": lambda: _drop(Path(shutil.copytree(a, copy)), "adapter_config.json"),
        "no-folder": lambda: tmp / "nowhere",
        "truncated": lambda: _truncate(Path(shutil.copytree(a, copy))),
        "garbage": lambda: _garbage(Path(shutil.copytree(a, copy))),
        "full-fine-tune": lambda: edit_config(a, copy, fine_tune_type="full"),
        "model-folder": lambda: kit.qwen3,
        "rank-mismatch": lambda: _rank(Path(shutil.copytree(a, copy)), 8),
        "bad-json": lambda: _bad_json(Path(shutil.copytree(a, copy))),
        "unknown-type": lambda: edit_config(a, copy, fine_tune_type="ia3"),
    }
    return Path(builders[case]())


CASES = {
    "wrong-shapes": "has shape (200, 4), llama needs (256, 4)",
    "narrow-model": "belongs to another model",
    "deeper-model": "which llama does not have: it belongs to another model",
    "more-layers": "trained on 6 layers and this model has 4",
    "no-weights": "has no adapters.safetensors",
    "no-config": "has no adapter_config.json",
    "no-folder": "no adapter folder at",
    "truncated": "adapters.safetensors is damaged",
    "garbage": "adapters.safetensors is damaged",
    "full-fine-tune": "is a full model, not an adapter",
    "model-folder": "is a full model, not an adapter",
    "rank-mismatch": "has rank 4 but adapter_config.json says rank 8",
    "bad-json": "adapter_config.json cannot be read",
    "unknown-type": "can swap lora and dora adapters only",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_adapter_is_one_clear_line_and_nothing_changes(llama_engine, demo_kit,
                                                           other_models, tmp_path, case):
    bad = make_case(case, demo_kit, other_models, tmp_path)
    a = demo_kit.adapter("tone-a")
    before = use(llama_engine, a)
    messages = [{"role": "user", "content": "Plan a short walk."}]
    t1 = chat_turn(llama_engine, messages)

    final = llama_engine.use_adapter(bad).wait(60)
    assert isinstance(final, Error), final
    assert final.kind == "adapter"
    assert CASES[case] in final.message
    assert "\n" not in final.message

    # The previous adapter is still the active one, with its cache.
    assert llama_engine.adapter is not None and llama_engine.adapter.name == "tone-a"
    state = result(llama_engine.adapter_state())
    assert state.identity == before.identity
    assert state.cached_tokens >= len(t1.prompt)
    messages += [{"role": "assistant", "content": t1.done.text},
                 {"role": "user", "content": "Now a longer one."}]
    t2 = chat_turn(llama_engine, messages)
    assert t2.stats.adapter == "tone-a"
    assert t2.stats.reused_tokens >= len(t1.prompt)
    assert t2.generated == reference_tokens(llama_engine, demo_kit.llama, a, t2.prompt)

    # The listing shows it as invalid, with the same reason.
    infos = result(llama_engine.list_adapters((), [bad]))
    assert [(i.valid, i.reason) for i in infos] == [(False, final.message)]


def test_listing_shows_every_adapter_with_its_facts(llama_engine, demo_kit, other_models,
                                                    tmp_path):
    missing = tmp_path / "no-such-dir"
    extra = demo_kit.adapter("tone-a")  # also inside the folder: listed once
    events = list(llama_engine.list_adapters([demo_kit.adapters("llama"), missing],
                                             [extra, other_models["narrow"]]))
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert len(notices) == 1 and str(missing) in notices[0]
    infos: list[AdapterInfo] = events[-1].value
    rows = [(i.name, i.valid, i.type_label, i.rank, i.layers_label, i.checked_against)
            for i in infos]
    assert rows == [
        ("tone-a", True, "LoRA", 4, "2-3", "llama"),
        ("tone-b", True, "LoRA", 8, "0-3", "llama"),
        ("tone-d", True, "DoRA", 4, "1-3", "llama"),
        ("narrow-a", False, "LoRA", 4, "2-3", "llama"),
    ]
    assert all(i.size_bytes > 0 and i.num_parameters > 0 for i in infos)
    assert infos[0].keys == ("self_attn.q_proj", "self_attn.v_proj")
    assert infos[0].config["lora_parameters"]["scale"] == 10.0
    assert not any(i.notes for i in infos[:3])  # made for this very model
    assert "belongs to another model" in infos[3].reason


def test_adapter_of_a_same_shaped_model_is_valid_with_a_note(engine, demo_kit):
    final = engine.load(str(demo_kit.qwen3)).wait(120)
    assert isinstance(final, ModelLoaded), final
    info = result(engine.check_adapter(demo_kit.adapter("tone-a", "llama")))
    assert info.valid and info.checked_against == "qwen3"
    assert len(info.notes) == 1 and "trained on" in info.notes[0]


def test_listing_without_a_model_checks_files_only(engine, demo_kit, tmp_path):
    bad = _truncate(Path(shutil.copytree(demo_kit.adapter("tone-b"), tmp_path / "cut")))
    infos = result(engine.list_adapters([demo_kit.adapters("llama")], [bad]))
    assert [(i.name, i.valid, i.checked_against) for i in infos] == [
        ("tone-a", True, ""), ("tone-b", True, ""), ("tone-d", True, ""), ("cut", False, "")]


def test_discovery_lists_candidates_and_skips_clutter(demo_kit, tmp_path):
    folder = tmp_path / "adapters"
    shutil.copytree(demo_kit.adapter("tone-a"), folder / "mine")
    (folder / "notes").mkdir()  # an unrelated folder: not listed
    (folder / ".hidden").mkdir()
    shutil.copytree(demo_kit.adapter("tone-b"), folder / ".hidden" / "x")
    (folder / "readme.txt").write_text("hi")
    half = folder / "half-copied"
    half.mkdir()
    shutil.copy(demo_kit.adapter("tone-a") / "adapters.safetensors", half)
    paths, problems = discover_adapters([folder, demo_kit.adapter("tone-d")])
    assert [p.name for p in paths] == ["half-copied", "mine", "tone-d"]
    assert problems == []
    assert not inspect_adapter(half).valid


def test_load_with_a_bad_adapter_fails_clearly(engine, demo_kit, other_models, tmp_path):
    # Files that are broken are refused before anything is loaded.
    final = engine.load(str(demo_kit.llama), str(tmp_path / "nowhere")).wait(120)
    assert isinstance(final, Error) and final.kind == "adapter"
    assert engine.info is None
    # An adapter that does not fit is found once the model is there: nothing stays loaded,
    # as with mlx_lm generate --adapter-path.
    final = engine.load(str(demo_kit.llama), str(other_models["narrow"])).wait(120)
    assert isinstance(final, Error) and "belongs to another model" in final.message
    assert engine.info is None
    final = engine.chat([{"role": "user", "content": "hi"}]).wait(60)
    assert isinstance(final, Error) and final.kind == "no-model"


def test_bad_adapter_on_reload_keeps_the_loaded_model(demo_kit, tmp_path):
    with Engine() as eng:
        assert isinstance(eng.load(str(demo_kit.llama)).wait(120), ModelLoaded)
        cut = _truncate(Path(shutil.copytree(demo_kit.adapter("tone-a"), tmp_path / "cut")))
        final = eng.load(str(demo_kit.qwen3), str(cut)).wait(120)
        assert isinstance(final, Error) and "is damaged" in final.message
        assert eng.info is not None and eng.info.name == "llama"
        t = chat_turn(eng, [{"role": "user", "content": "Still there?"}])
        assert t.stats.generated_tokens > 0


def test_changed_adapter_files_are_prepared_again(llama_engine, demo_kit, tmp_path):
    mine = Path(shutil.copytree(demo_kit.adapter("tone-a"), tmp_path / "mine"))
    first = use(llama_engine, mine)
    use(llama_engine, None)
    # Retrained in place (here: replaced by tone-b's files): a new identity, new layers.
    for name in ("adapter_config.json", "adapters.safetensors"):
        shutil.copy(demo_kit.adapter("tone-b") / name, mine / name)
    second = use(llama_engine, mine)
    assert second.identity != first.identity and second.prepare_ms > 0
    assert second.info is not None and second.info.rank == 8
    t = chat_turn(llama_engine, [{"role": "user", "content": "Which one are you?"}])
    assert t.generated == reference_tokens(llama_engine, demo_kit.llama, mine, t.prompt)
