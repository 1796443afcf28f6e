"""The shipped demo chat model (models/demo_assets): it writes readable words, answers its
suggested prompts recognisably, its adapters change the style, its files stay small, and the
recipe that made it (models/demo_recipe.py) is deterministic and runs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from models import demo_recipe as recipe

ASSETS = recipe.ASSETS_DIR
MODEL = ASSETS / recipe.MODEL_NAME
ADAPTERS = ASSETS / "adapters"
MAX_SHIPPED_BYTES = 4 * 1024 * 1024

PIRATE_WORDS = re.compile(r"\b(arr|matey|ahoy|ye|be|me|yer)\b", re.IGNORECASE)


def _reply(model, tokenizer, prompt: str, max_tokens: int = 60) -> str:
    from mlx_lm import generate
    from mlx_lm.sample_utils import make_sampler

    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                        add_generation_prompt=True)
    return generate(model, tokenizer, ids, max_tokens=max_tokens, sampler=make_sampler(0.0))


@pytest.fixture(scope="module")
def base():
    from mlx_lm import load

    return load(str(MODEL))


@pytest.fixture(scope="module")
def answers() -> dict[str, str]:
    topics, _ = recipe.load_source()
    return {p: t["answer"] for t in topics for p in t["prompts"]}


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z']+", text.lower())


def _known_words() -> set[str]:
    return {w for text in recipe.corpus() for w in _words(text)}


def _overlap(reply: str, expected: str) -> float:
    """The share of the expected answer's words, in order, at the start of the reply."""
    got, want = _words(reply), _words(expected)
    same = 0
    for a, b in zip(got, want, strict=False):
        if a != b:
            break
        same += 1
    return same / len(want)


# -- what ships ------------------------------------------------------------------------------
def test_shipped_files_are_small_and_recorded() -> None:
    files = [p for p in ASSETS.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total < MAX_SHIPPED_BYTES, f"demo assets grew to {total} bytes"
    manifest = json.loads((ASSETS / "RECIPE.json").read_text())
    recorded = manifest["files"]
    shipped = {str(p.relative_to(ASSETS)) for p in files} - {"RECIPE.json"}
    assert shipped == set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name
    assert not (ASSETS / "work").exists() and not (ASSETS / "data").exists()


def test_shipped_model_is_marked_demo_and_adapters_fit() -> None:
    from engine.adapters import inspect_adapter
    from models.demo import is_demo_model

    assert is_demo_model(MODEL)
    config = json.loads((MODEL / "config.json").read_text())
    assert config["torch_dtype"] == recipe.EXPORT_DTYPE
    for name in recipe.ADAPTER_NAMES:
        info = inspect_adapter(ADAPTERS / name)
        assert info.valid, info.reason
        assert info.base_model == recipe.MODEL_NAME  # a name, no path of the build machine


def test_recipe_data_is_deterministic_and_matches_the_shipped_model(tmp_path: Path) -> None:
    first = recipe.write_data(tmp_path / "a", seed=recipe.SEED)
    second = recipe.write_data(tmp_path / "b", seed=recipe.SEED)
    assert first == second
    manifest = json.loads((ASSETS / "RECIPE.json").read_text())
    assert manifest["data"] == first, "the shipped model was trained on other data: rerun " \
                                      "python -m models.demo_recipe models/demo_assets --ship"
    assert recipe.write_data(tmp_path / "c", seed=recipe.SEED + 1) != first


# -- how it answers ----------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", recipe.suggested_prompts())
def test_suggested_prompts_are_answered_recognisably(base, answers, prompt: str) -> None:
    model, tokenizer = base
    reply = _reply(model, tokenizer, prompt)
    assert "\ufffd" not in reply
    assert _overlap(reply, answers[prompt]) >= 0.5, reply


def test_unseen_prompts_get_real_words(base) -> None:
    model, tokenizer = base
    known = _known_words()
    for prompt in ("What is the meaning of life?", "Tell me about volcanoes", "ok then"):
        reply = _reply(model, tokenizer, prompt)
        assert "\ufffd" not in reply
        words = _words(reply)
        assert words, repr(reply)
        assert sum(w in known for w in words) / len(words) >= 0.9, reply


@pytest.mark.parametrize("adapter", recipe.ADAPTER_NAMES)
def test_adapters_change_the_style(base, adapter: str) -> None:
    from mlx_lm import load

    model, tokenizer = load(str(MODEL), adapter_path=str(ADAPTERS / adapter))
    base_model, _ = base
    for prompt in ("Hello", "Tell me about MLX", "Explain tokens per second"):
        plain = _reply(base_model, tokenizer, prompt)
        styled = _reply(model, tokenizer, prompt)
        assert "\ufffd" not in styled
        assert styled != plain
        if adapter == "pirate":
            assert PIRATE_WORDS.search(styled), styled
        else:
            assert len(_words(styled)) <= 10 < len(_words(plain)), (styled, plain)


# -- the recipe runs ---------------------------------------------------------------------------
@pytest.mark.slow
def test_recipe_runs_end_to_end(tmp_path: Path) -> None:
    """A few iterations of every stage: the folders it writes load and generate."""
    from mlx_lm import load

    out = tmp_path / "out"
    manifest = recipe.build(out, iters=dict.fromkeys(recipe.STYLES, 2))
    assert set(manifest["stages"]) == set(recipe.STYLES)
    model, tokenizer = load(str(out / recipe.MODEL_NAME),
                            adapter_path=str(out / "adapters" / "pirate"))
    assert isinstance(_reply(model, tokenizer, "Hello", max_tokens=4), str)
    assert manifest["data"] == json.loads((ASSETS / "RECIPE.json").read_text())["data"]


# -- the kit and demo mode ---------------------------------------------------------------------
def test_kit_installs_the_shipped_chat_model_and_adapters(demo_kit) -> None:
    from engine.adapters import discover_adapters, inspect_adapter
    from models.demo import is_built

    assert demo_kit.default_model == demo_kit.chat
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (demo_kit.chat / name).read_bytes() == (MODEL / name).read_bytes()
    found, problems = discover_adapters([demo_kit.chat_adapters])
    assert problems == []
    assert [p.name for p in found] == sorted(recipe.ADAPTER_NAMES)
    assert all(inspect_adapter(p).valid for p in found)
    assert demo_kit.llama.is_dir() and demo_kit.adapter("tone-a").is_dir()  # still there
    assert is_built(demo_kit.root)


def test_demo_mode_offers_the_demo_adapters(demo_kit, monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    from dataclasses import replace

    from workbench import runtime
    from workbench.config import Config

    monkeypatch.setattr(runtime, "demo_model_path", lambda progress=None: demo_kit.chat)
    args = argparse.Namespace(demo=True, model=None, adapter=["pirate"])
    choice = runtime.choose_model(args, Config())
    assert choice.is_demo and choice.spec == str(demo_kit.chat)
    assert choice.adapter == str(demo_kit.chat_adapters / "pirate")  # a name is enough
    info = _info(demo_kit.chat)
    assert runtime.demo_adapters(info) == str(demo_kit.chat_adapters)
    assert runtime.demo_adapters(replace(info, is_demo=False)) is None
    assert runtime.demo_adapters(None) is None


def _info(path: Path):
    from engine.events import ModelInfo

    return ModelInfo(name=path.name, path=str(path), architecture="llama", num_parameters=1,
                     bits_per_weight=16, weight_bytes=1, context_length=1, load_time_s=0,
                     is_demo=True)


@pytest.mark.slow
def test_line_mode_on_the_demo_lists_and_uses_its_adapters(tmp_path: Path) -> None:
    """Issue 10 #10: demo mode lists its adapters, none with a dead temporary path, and the
    pirate one answers like a pirate (a fresh cache: the kit is built as a new user's is)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "WORKBENCH_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "chat", "--plain", "--jsonl", "--demo",
         "--max-tokens", "40"], input="/adapters\n/adapter pirate\nHello\n",
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    listed = next(o for o in objs if o.get("command") == "adapters")["message"]
    assert "pirate" in listed and "brief" in listed and ".demo-" not in listed
    reply = next(o for o in objs if o.get("role") == "assistant")
    assert reply["adapter"] == "pirate" and PIRATE_WORDS.search(reply["content"])
    assert "\ufffd" not in reply["content"]


def test_demo_label_says_what_the_demo_is(demo_kit) -> None:
    from workbench.runtime import demo_label

    info = _info
    chat = demo_label(info(demo_kit.chat))
    assert "DEMO model" in chat and "trained on a few dozen answers" in chat
    assert "nonsense" not in chat and "--model" in chat
    assert "random weights" in demo_label(info(demo_kit.llama))
