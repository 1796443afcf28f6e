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


_LORA_A = "model.layers.3.self_attn.q_proj.lora_a"
_LORA_B = "model.layers.2.self_attn.v_proj.lora_b"


def _poison(value: float):
    def edit(tensors: dict[str, np.ndarray]) -> None:
        tensors[_LORA_B] = tensors[_LORA_B].copy()
        tensors[_LORA_B].flat[5] = value
    return edit


def _integers(tensors: dict[str, np.ndarray]) -> None:
    tensors[_LORA_A] = (tensors[_LORA_A] * 100).astype(np.int32)


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
        "nan-values": lambda: edit_tensors(a, copy, _poison(float("nan"))),
        "inf-values": lambda: edit_tensors(a, copy, _poison(float("-inf"))),
        "integer-tensors": lambda: edit_tensors(a, copy, _integers),
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
    "nan-values": f"{_LORA_B} holds 1 NaN or infinite value of",
    "inf-values": f"{_LORA_B} holds 1 NaN or infinite value of",
    "integer-tensors": f"{_LORA_A} holds integers (I32), not trained weights",
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


def test_a_bad_adapter_does_not_stop_the_base_model(engine, demo_kit, other_models,
                                                      tmp_path):
    """Issue 10 #13: the base model loads; the adapter is reported in one line."""
    for adapter, why in ((tmp_path / "nowhere", "nowhere"),
                         (other_models["narrow"], "belongs to another model")):
        events = list(engine.load(str(demo_kit.llama), str(adapter)))
        assert isinstance(events[-1], ModelLoaded), events[-1]
        notices = [e.message for e in events if isinstance(e, Notice)]
        assert len(notices) == 1 and why in notices[0] and "without the adapter" in notices[0]
        assert engine.info is not None and engine.info.adapter is None
        assert engine.adapter is not None and engine.adapter.info is None
        turn = chat_turn(engine, [{"role": "user", "content": "hi"}])
        assert turn.stats.generated_tokens > 0 and turn.stats.adapter is None


def test_bad_adapter_on_reload_loads_the_new_model_without_it(demo_kit, tmp_path):
    with Engine() as eng:
        assert isinstance(eng.load(str(demo_kit.llama)).wait(120), ModelLoaded)
        cut = _truncate(Path(shutil.copytree(demo_kit.adapter("tone-a"), tmp_path / "cut")))
        events = list(eng.load(str(demo_kit.qwen3), str(cut)))
        assert isinstance(events[-1], ModelLoaded)
        assert any("is damaged" in e.message for e in events if isinstance(e, Notice))
        assert eng.info is not None and eng.info.name == "qwen3" and eng.info.adapter is None
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


def _write_raw_safetensors(file: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    """A safetensors file from raw bytes (numpy has no bfloat16)."""
    header: dict[str, object] = {}
    at = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [at, at + len(data)]}
        at += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    file.write_bytes(len(raw).to_bytes(8, "little") + raw
                     + b"".join(d for _, _, d in tensors.values()))


@pytest.mark.parametrize(("dtype", "poison", "valid"), [
    ("F16", None, True), ("BF16", None, True),
    ("F16", np.float16("inf").tobytes(), False),
    ("BF16", b"\xc0\x7f", False),  # a bfloat16 NaN
    ("BF16", b"\x80\x7f", False),  # bfloat16 +inf
    ("F64", None, False), ("U8", None, False),
])
def test_values_and_dtypes_are_checked_from_the_files(demo_kit, tmp_path, dtype, poison, valid):
    """Half-precision adapters are fine; NaN/Inf in any float dtype, and dtypes MLX does not
    train adapters in, are refused by inspect_adapter itself (what the listing shows)."""
    from safetensors.numpy import load_file

    copy = Path(shutil.copytree(demo_kit.adapter("tone-a"), tmp_path / "a"))
    tensors = load_file(str(copy / "adapters.safetensors"))
    width = {"F16": 2, "BF16": 2, "F64": 8, "U8": 1}[dtype]
    raw = {}
    for name, array in tensors.items():
        data = (array.astype(np.float16).tobytes() if width == 2
                else array.astype(np.float64 if dtype == "F64" else np.uint8).tobytes())
        if dtype == "BF16":  # the top half of each float32
            data = array.astype("<f4").ravel().view("<u2")[1::2].tobytes()
        if poison is not None and name == _LORA_B:
            data = data[:2] + poison + data[4:]
        raw[name] = (dtype, list(array.shape), data)
    _write_raw_safetensors(copy / "adapters.safetensors", raw)
    info = inspect_adapter(copy)
    assert info.valid is valid, info.reason
    if not valid:
        assert "\n" not in info.reason
        expect = {"F64": "is F64, which adapters cannot use", "U8": "holds integers (U8)"}
        assert (expect.get(dtype) if poison is None else "1 NaN or infinite value") \
            in info.reason


def test_value_check_is_cached_and_sees_a_changed_file(demo_kit, tmp_path):
    copy = Path(shutil.copytree(demo_kit.adapter("tone-a"), tmp_path / "a"))
    assert inspect_adapter(copy).valid
    assert inspect_adapter(copy).valid  # from the cache
    edit_tensors(copy, tmp_path / "b", _poison(float("nan")))
    shutil.copy(tmp_path / "b" / "adapters.safetensors", copy / "adapters.safetensors")
    assert "NaN" in inspect_adapter(copy).reason
