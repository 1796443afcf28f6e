"""The adapter fast path (issue 12) gives exactly what mlx-lm gives for the same configuration.

Fused mode (engine/adapter_fuse.py) against ``mlx_lm fuse`` output loaded with
``mlx_lm.load``; unfused mode against ``mlx_lm.load(model, adapter_path=...)``; LoRA and
DoRA, full precision and 4-bit; swaps between fused adapters and back, each turn against a
fresh mlx-lm run; fused mode falls back to unfused when a (small, injected) memory probe
says the fused copy does not fit, and drops other adapters' fused copies to make room.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from adapter_fixtures import chat_turn, result, scaled_copy, use

from engine import Engine, ModelLoaded

MAX_TOKENS = 12
_fused_folders: dict[tuple[str, str], Path] = {}


def fused_folder(engine: Engine, model: Path, adapter: Path, tmp: Path) -> Path:
    """``python -m mlx_lm fuse --model M --adapter-path A --save-path S``, run in-process (its
    own ``main``) on the engine thread; one folder per model and adapter for the session."""
    key = (str(model), str(adapter))
    if key not in _fused_folders:
        save = tmp / f"fused-{model.name}-{adapter.parent.name}-{adapter.name}"

        def fuse(_core: Any, _emit: Any, _cancel: Any) -> None:
            import mlx_lm.fuse

            argv = sys.argv
            sys.argv = ["mlx_lm.fuse", "--model", str(model), "--adapter-path", str(adapter),
                        "--save-path", str(save)]
            try:
                mlx_lm.fuse.main()
            finally:
                sys.argv = argv

        result(engine.submit(fuse))
        _fused_folders[key] = save
    return _fused_folders[key]


def mlx_lm_tokens(engine: Engine, model: Path, adapter: Path | None,
                  prompt: list[int]) -> list[int]:
    """Greedy tokens from a fresh ``mlx_lm.load(model, adapter_path=adapter)``."""

    def fn(_core: Any, _emit: Any, _cancel: Any) -> list[int]:
        import mlx.core as mx
        from mlx_lm import load, stream_generate

        m, tok = load(str(model), adapter_path=str(adapter) if adapter else None)
        return [r.token for r in stream_generate(m, tok, mx.array(prompt),
                                                 max_tokens=MAX_TOKENS)]

    return result(engine.submit(fn))


def expected(engine: Engine, model: Path, adapter: Path | None, prompt: list[int],
             fused: bool, tmp: Path) -> list[int]:
    if adapter is not None and fused:
        return mlx_lm_tokens(engine, fused_folder(engine, model, adapter, tmp), None, prompt)
    return mlx_lm_tokens(engine, model, adapter, prompt)


def load(engine: Engine, model: Path) -> Engine:
    final = engine.load(str(model)).wait(120)
    assert isinstance(final, ModelLoaded), final
    return engine


@pytest.fixture(scope="module")
def fuse_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fused")


@pytest.mark.parametrize("mode", ["fused", "unfused"])
@pytest.mark.parametrize("adapter", ["tone-b", "tone-d"])  # LoRA, DoRA
@pytest.mark.parametrize("model", ["llama", "llama-4bit"])
def test_fast_path_matches_mlx_lm(demo_kit, fuse_tmp, model, adapter, mode):
    path, adapter_dir = demo_kit.root / model, demo_kit.adapter(adapter, "llama")
    with Engine(adapter_mode=mode) as engine:
        load(engine, path)
        state = use(engine, adapter_dir)
        assert state.mode == mode and state.adapter_mode == mode
        assert (state.fused_bytes > 0) == (mode == "fused")
        assert (" fused " in state.identity) == (mode == "fused")
        turn = chat_turn(engine, [{"role": "user", "content": "Tell me about the plan."}],
                         MAX_TOKENS)
        assert turn.stats.adapter_identity == state.identity
        assert turn.generated == expected(engine, path, adapter_dir, turn.prompt,
                                          mode == "fused", fuse_tmp)


def test_swaps_between_fused_adapters_stay_exact(demo_kit, fuse_tmp):
    path = demo_kit.llama_4bit
    with Engine(adapter_mode="auto") as engine:  # auto: fused, memory allowing
        load(engine, path)
        messages: list[dict[str, str]] = []
        last_prompt: dict[str, int] = {}
        for i, choice in enumerate(("tone-b", "tone-d", "none", "tone-b", "tone-d")):
            adapter = None if choice == "none" else demo_kit.adapter(choice, "llama")
            state = use(engine, adapter)
            assert state.mode == (None if adapter is None else "fused")
            messages.append({"role": "user", "content": f"Point {i} of the plan?"})
            turn = chat_turn(engine, messages, MAX_TOKENS)
            assert turn.generated == expected(engine, path, adapter, turn.prompt, True,
                                              fuse_tmp), f"turn {i} under {choice}"
            if choice in last_prompt:  # its own cache was kept while the others ran
                assert turn.stats.reused_tokens >= last_prompt[choice]
            last_prompt[choice] = len(turn.prompt)
            messages.append({"role": "assistant", "content": turn.done.text})
        # Fused and unfused K/V differ: the unfused run of the same adapter has its own cache.
        fused_identity = engine.adapter.identity
        state = result(engine.set_adapter_mode("unfused"))
        assert state.mode == "unfused" and state.identity != fused_identity
        messages.append({"role": "user", "content": "And unfused?"})
        turn = chat_turn(engine, messages, MAX_TOKENS)
        assert turn.stats.reused_tokens == 0
        assert turn.generated == expected(engine, path, demo_kit.adapter("tone-d", "llama"),
                                          turn.prompt, False, fuse_tmp)


def test_fused_mode_falls_back_to_unfused_when_memory_is_short(demo_kit, fuse_tmp):
    free = [1 << 40]
    path, adapter = demo_kit.llama_4bit, demo_kit.adapter("tone-b", "llama")
    with Engine(memory_probe=lambda: free[0], adapter_mode="fused") as engine:
        load(engine, path)
        free[0] = 100_000  # the fused copy (about 1.5 MB) does not fit any more
        state = use(engine, adapter)
        assert state.mode == "unfused" and state.fused_bytes == 0
        assert "running unfused" in state.mode_note and "free" in state.mode_note
        assert " fused " not in state.identity
        turn = chat_turn(engine, [{"role": "user", "content": "Short of memory?"}], MAX_TOKENS)
        assert turn.generated == expected(engine, path, adapter, turn.prompt, False, fuse_tmp)
        free[0] = 1 << 40  # memory is back: the next activation fuses it
        state = use(engine, adapter)
        assert state.mode == "fused" and state.mode_note == ""


def test_fused_copies_are_bounded_by_memory(demo_kit, fuse_tmp, tmp_path):
    budget = [1 << 40]
    engine = Engine(memory_probe=lambda: budget[0] - fused_now(engine), adapter_mode="fused")

    def fused_now(eng: Engine) -> int:
        core = eng._core  # the probe sees what the fused copies hold
        return core.adapters.fused_bytes() if core is not None else 0

    path = demo_kit.llama_4bit
    tone_b, tone_d = demo_kit.adapter("tone-b", "llama"), demo_kit.adapter("tone-d", "llama")
    with engine:
        load(engine, path)
        nd = use(engine, tone_d).fused_bytes
        nb = use(engine, tone_b).fused_bytes
        kept = result(engine.submit(lambda core, _e, _c: sorted(
            p.info.name for p in core.adapters if p.fused is not None)))
        assert kept == ["tone-b", "tone-d"] and nb > 0 and nd > 0
        # Room for tone-b's copy only: remaking it (at another scale) drops tone-d's.
        budget[0] = int(nb / 0.9) + nd // 2
        state = result(engine.set_adapter_scale(0.5))
        assert state.mode == "fused"
        kept = result(engine.submit(lambda core, _e, _c: sorted(
            p.info.name for p in core.adapters if p.fused is not None)))
        assert kept == ["tone-b"]
        turn = chat_turn(engine, [{"role": "user", "content": "Half the scale?"}], MAX_TOKENS)
        half = scaled_copy(tone_b, tmp_path / "tone-b-half", 0.5)
        assert turn.generated == expected(engine, path, half, turn.prompt, True, fuse_tmp)


@pytest.mark.parametrize("argv", [[], ["chat"], ["generate", "-p", "hi"], ["eval"]])
def test_adapter_mode_is_a_setting_on_every_face(argv, monkeypatch):
    from workbench import runtime
    from workbench.cli import build_parser
    from workbench.config import Config

    parser = build_parser()
    assert parser.parse_args(argv).adapter_mode is None  # auto, the default
    args = parser.parse_args([*argv, "--adapter-mode", "unfused"])
    assert args.adapter_mode == "unfused"
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--adapter-mode", "sometimes"])
    made: dict[str, Any] = {}
    monkeypatch.setattr(runtime, "Engine", lambda **kw: made.update(kw))
    runtime.start_engine(args, Config())
    assert made["adapter_mode"] == "unfused"


def test_fake_engine_takes_the_adapter_mode():
    from fake_engine import FakeEngine

    with FakeEngine(adapters=["tone-a"], adapter_mode="fused") as fake:
        assert fake.adapter_mode == "fused"


async def test_adapter_details_say_how_the_active_adapter_runs(demo_kit):
    from textual.app import App
    from textual.widgets import Static

    from engine.adapter_swap import AdapterState
    from engine.adapters import inspect_adapter
    from workbench.tui.screens.adapter_details import AdapterDetailsScreen, mode_line

    info = inspect_adapter(demo_kit.adapter("tone-b", "llama"))
    fused = AdapterState(info, 1.0, info.scale, "tone-b@x fused x1", mode="fused",
                         fused_bytes=1_474_560)
    assert mode_line(fused).startswith("Runs fused") and "1.5 MB" in mode_line(fused)
    short = AdapterState(info, 1.0, info.scale, "tone-b@x x1", mode="unfused",
                         adapter_mode="auto", mode_note="fusing needs 1.5 MB ...: running "
                                                        "unfused")
    assert mode_line(short).startswith("Runs unfused: fusing needs")

    class Host(App[None]):
        def on_mount(self) -> None:
            self.push_screen(AdapterDetailsScreen(info, 1.0, fused))

    app = Host()
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.pause()
        assert "Runs fused" in str(app.screen.query_one("#adapter-mode", Static).render())


def test_load_warm_up_is_a_visible_step_that_changes_no_reply(demo_kit):
    from engine import LoadProgress

    def stages(engine: Engine) -> list[str]:
        return [e.stage for e in engine.load(str(demo_kit.llama_4bit))
                if isinstance(e, LoadProgress)]

    messages = [{"role": "user", "content": "Warm?"}]
    with Engine() as engine:  # CPU: skipped by default
        assert "warm-up" not in stages(engine)
        cold = chat_turn(engine, messages, MAX_TOKENS)
    with Engine(warm_up=True) as engine:
        seen = stages(engine)
        assert seen.index("warm-up") == len(seen) - 2 and seen[-1] == "ready"
        warm = chat_turn(engine, messages, MAX_TOKENS)
        assert warm.generated == cold.generated and warm.stats.reused_tokens == 0
