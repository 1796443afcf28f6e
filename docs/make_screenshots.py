"""Screenshots of the workbench for the docs, taken by the app itself.

By default the app runs headless on the scripted fake engine (``tests/fake_engine.py``: no
MLX, the same reply every time) with the live meters showing fixed numbers, so the
screenshots only change when the app does. ``--model`` runs it on a real model instead
(greedy decoding; the meters show what that machine measured). It answers one message
and saves SVG screenshots with ``App.export_screenshot``: the main screen in both workbench
themes and at 80x24, the settings and the help screen, and the Train screen with its live
loss curves (a scripted run, ``tests/fake_jobs.py``: no training happens) at 120x36 and
80x24.

    python docs/make_screenshots.py                    # fake engine -> docs/screenshots/
    python docs/make_screenshots.py --model mlx-community/Qwen3-0.6B-4bit
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the workbench and tests/ from this checkout

from textual.widgets import TextArea  # noqa: E402

from engine import MemoryReading, SamplingParams, TurnStats  # noqa: E402
from themes import DARK, LIGHT  # noqa: E402
from workbench.cli import make_args  # noqa: E402
from workbench.config import Config  # noqa: E402
from workbench.tui.app import WorkbenchApp  # noqa: E402

SIZE = (132, 42)
SMALL = (80, 24)
PROMPT = "Explain Python list comprehensions with a short example."
REPLY = ("A list comprehension builds a new list from an iterable in one expression:\n\n"
         "```python\nsquares = [x * x for x in range(10)]\n"
         "evens = [n for n in numbers if n % 2 == 0]\n```\n\n"
         "Read it left to right: the value to keep, the loop, then an optional filter. "
         "It is shorter than the equivalent `for` loop with `append`, and usually faster.")
STATS = TurnStats(prompt_tokens=31, reused_tokens=0, prefill_tokens=31, prefill_tps=840.0,
                  ttft_s=0.052, decode_tps=212.4, generated_tokens=64, finish_reason="stop",
                  peak_memory=420_000_000, kv_bytes=3_100_000, context_tokens=95)
MEMORY = MemoryReading(mlx_active=380_000_000, mlx_peak=420_000_000, mlx_cache=0,
                       process_rss=900_000_000, system_available=11_200_000_000,
                       system_total=17_100_000_000, device_total=17_100_000_000,
                       weight_bytes=340_000_000, kv_bytes=3_100_000)
RATE = [0.0] * 36 + [120.0, 198.0, 214.0, 209.0, 217.0, 211.0, 206.0, 215.0, 212.0, 210.0,
                     213.0, 0.0]


def fake_engine():  # type: ignore[no-untyped-def]
    from tests.fake_engine import FakeEngine, fake_adapter

    return FakeEngine(replies=[REPLY], memory_reading=MEMORY, model_facts={
        "name": "Qwen3-0.6B-4bit", "path": "/models/Qwen3-0.6B-4bit",
        "architecture": "qwen3", "num_parameters": 596_000_000, "bits_per_weight": 4.5,
        "weight_bytes": 340_000_000, "context_length": 40960},
        adapters=[fake_adapter("pirate", "/adapters/pirate", rank=8, num_layers=16),
                  fake_adapter("terse", "/adapters/terse", rank=4, num_layers=8)])


async def _until(condition, what: str, timeout: float = 300.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise SystemExit(f"make_screenshots: gave up waiting for {what}")
        await asyncio.sleep(0.05)


def freeze(app: WorkbenchApp) -> None:
    """The fake engine's numbers are counts, not measurements: show fixed ones instead."""
    throughput = app.sidebar.throughput
    throughput.show_stats(STATS)
    throughput.samples.clear()
    throughput.samples.extend(RATE)
    app.sidebar.memory.record(MEMORY)
    app.sidebar.model.record_context(STATS.context_tokens)
    for turn in app.chat_view.turns():
        if hasattr(turn, "show_stats"):
            turn.show_stats(STATS)
    app.freeze_meters()


async def shoot(model: str | None, theme: str, size: tuple[int, int], out: Path,
                shots: tuple[str, ...]) -> list[Path]:
    # Each run's sessions and config go to a folder of their own, not the user's.
    scratch = Path(tempfile.mkdtemp(prefix="wb-screenshots-"))
    for kind in ("CONFIG", "DATA", "CACHE"):
        os.environ[f"WORKBENCH_{kind}_DIR"] = str(scratch / kind.lower())
    params = SamplingParams(temperature=0.0, seed=0, max_tokens=160)
    args = make_args(model=model or "Qwen3-0.6B-4bit", theme=theme,
                     adapters=None if model else "/adapters")
    app = WorkbenchApp(args, config=Config(theme=theme), params=params,
                       engine=None if model else fake_engine())
    suffix = "" if size == SIZE else f"-{size[0]}x{size[1]}"
    saved = []

    def save(name: str) -> None:
        path = out / f"{name}{suffix}-{theme}.svg"
        path.write_text(app.export_screenshot(title="MLX Workbench"), encoding="utf-8")
        saved.append(path)

    async with app.run_test(size=size) as pilot:
        await _until(lambda: app.models.load_finished, "the model to load")
        if not app.models.ready:
            raise SystemExit(f"make_screenshots: the model did not load: {app.status.text}")
        await _until(lambda: app.adapters.pane.status == "", "the adapters list")
        await pilot.press(*PROMPT)
        await pilot.press("enter")
        view = app.chat_view
        await _until(lambda: view.last_assistant() is not None
                     and view.last_assistant().done and not app.chat.replying,  # type: ignore[union-attr]
                     "the reply")
        await _until(lambda: app.sessions.saved, "the autosave")
        if model is None:
            freeze(app)
        app.prompt.cursor_blink = False
        await pilot.pause(0.5)  # let the meters repaint once more
        save("main")
        if "settings" in shots:
            await pilot.press("f2")
            await pilot.pause(0.3)
            app.screen.query_one("#system-prompt", TextArea).cursor_blink = False
            await pilot.pause()
            save("settings")
            await pilot.press("escape")
        if "help" in shots:
            await pilot.press("f1")
            await pilot.pause(0.3)
            save("help")
    return saved


TRAIN_SIZES = ((120, 36), SMALL)


async def shoot_train(theme: str, size: tuple[int, int], out: Path) -> Path:
    """The Train screen in the middle of a scripted run (the fake engine, a fake job)."""
    from textual.widgets import Input, Select

    from tests.fake_jobs import Jobs, curve
    from workbench.tui.screens.train import TrainScreen

    scratch = Path(tempfile.mkdtemp(prefix="wb-screenshots-"))
    for kind in ("CONFIG", "DATA", "CACHE"):
        os.environ[f"WORKBENCH_{kind}_DIR"] = str(scratch / kind.lower())
    args = make_args(model="Qwen3-0.6B-4bit", theme=theme, adapters="/adapters")
    app = WorkbenchApp(args, config=Config(theme=theme),
                       params=SamplingParams(temperature=0.0, seed=0, max_tokens=160),
                       engine=fake_engine())
    jobs = Jobs()
    app.training.train_job = jobs
    async with app.run_test(size=size) as pilot:
        await _until(lambda: app.models.ready, "the model to load")
        await _until(lambda: app.adapters.pane.status == "", "the adapters list")
        freeze(app)
        await pilot.press("f6")
        await _until(lambda: isinstance(app.screen, TrainScreen), "the Train screen")
        screen = app.screen
        screen.query_one("#train-source", Select).value = "folder"
        screen.query_one("#train-data", Input).value = "~/data/support-chats"
        screen.query_one("#train-iters", Input).value = "600"
        screen.query_one("#train-adapter_path", Input).value = "~/adapters/support-tone"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await _until(lambda: bool(jobs.made) and jobs.made[0].started.is_set(), "the run")
        jobs.made[0].feed(*curve("~/adapters/support-tone", 320))
        run = app.training.run
        await _until(lambda: run is not None and len(run.train_points) == 32, "the curves")
        await pilot.pause(0.5)
        path = out / f"train-{size[0]}x{size[1]}-{theme}.svg"
        path.write_text(app.export_screenshot(title="MLX Workbench"), encoding="utf-8")
        app.training.cancel_all()  # the scripted run ends with the app
    return path


INSIDE_SIZES = ((120, 36), SMALL)
THINK_PROMPT = "What is the capital of Australia?"
THINK_REPLY = ("<think>The user asks for the capital of Australia. Many people guess Sydney, "
               "the largest city, but the capital is Canberra: it was chosen as a compromise "
               "between Sydney and Melbourne.</think>\n\n"
               "The capital of Australia is **Canberra**, not Sydney. It was chosen in 1908 "
               "as a compromise between Sydney and Melbourne, the two largest cities.")
TOKENS_PROMPT = "And why not Sydney?"
TOKENS_REPLY = ("Sydney and Melbourne were rivals, so neither could be the capital. Canberra "
                "was built between them as a planned city.")
BRANCH_REPLY = "a new capital, far from both, was the only fair choice."


async def shoot_inside(theme: str, size: tuple[int, int], out: Path) -> list[Path]:
    """Issue 13's views on the fake engine: a reasoning model's thinking block, the token
    probability view with a token's alternatives, and the branch made from one."""
    from tests.fake_engine import FakeEngine

    scratch = Path(tempfile.mkdtemp(prefix="wb-screenshots-"))
    for kind in ("CONFIG", "DATA", "CACHE"):
        os.environ[f"WORKBENCH_{kind}_DIR"] = str(scratch / kind.lower())
    fake = FakeEngine(replies=[THINK_REPLY, TOKENS_REPLY, BRANCH_REPLY], memory_reading=MEMORY,
                      model_facts={"name": "Qwen3-0.6B-4bit", "architecture": "qwen3",
                                   "num_parameters": 596_000_000, "bits_per_weight": 4.5,
                                   "weight_bytes": 340_000_000, "context_length": 40960,
                                   "reasoning": True, "thinking_switch": True})
    app = WorkbenchApp(make_args(model="Qwen3-0.6B-4bit", theme=theme),
                       config=Config(theme=theme),
                       params=SamplingParams(temperature=0.0, seed=0, max_tokens=160),
                       engine=fake)
    saved = []

    def save(name: str) -> None:
        app.clear_notifications()
        path = out / f"inside-{name}-{size[0]}x{size[1]}-{theme}.svg"
        path.write_text(app.export_screenshot(title="MLX Workbench"), encoding="utf-8")
        saved.append(path)

    async def ask(text: str) -> None:
        asked = len(fake.chats)
        await pilot.press(*text, "enter")
        await _until(lambda: len(fake.chats) > asked and not app.chat.replying
                     and app.chat_view.last_assistant() is not None
                     and app.chat_view.last_assistant().done,  # type: ignore[union-attr]
                     "the reply")
        await _until(lambda: app.sessions.saved, "the autosave")
        freeze(app)
        app.prompt.cursor_blink = False

    async with app.run_test(size=size) as pilot:
        await _until(lambda: app.models.ready, "the model to load")
        await ask(THINK_PROMPT)
        app.chat_view.focus()
        await pilot.pause()
        await pilot.press("enter")  # open the thinking
        await pilot.pause(0.5)
        save("reasoning")
        await pilot.press("enter")  # and fold it again
        app.prompt.focus()
        await pilot.pause()
        await pilot.press("f9")  # the probability view
        await ask(TOKENS_PROMPT)
        app.chat_view.focus()
        await pilot.pause()
        await pilot.press(*["right"] * 9)  # "be"
        await pilot.pause(0.3)
        save("tokens")
        await pilot.press("enter")
        await pilot.pause(0.5)
        save("token-choices")
        await pilot.press("enter")  # continue with the likeliest other token
        await _until(lambda: len(fake.chats) == 3 and not app.chat.replying, "the branch")
        await _until(lambda: app.chat_view.last_assistant() is not None
                     and app.chat_view.last_assistant().done, "the branch's reply")  # type: ignore[union-attr]
        freeze(app)
        await pilot.pause(0.5)
        await pilot.press("f10")
        await pilot.pause(0.5)
        save("branches")
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", help="a model folder or repo id (default: the "
                        "scripted fake engine)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("screenshots"))
    parser.add_argument("--only", choices=("main", "train", "inside"),
                        help="take only these screenshots")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = ((DARK, SIZE, ("settings", "help")), (LIGHT, SIZE, ()), (DARK, SMALL, ()))
    for theme, size, shots in runs if args.only in (None, "main") else ():
        for path in asyncio.run(shoot(args.model, theme, size, args.out, shots)):
            print(path)
    for size in TRAIN_SIZES if args.only in (None, "train") and not args.model else ():
        print(asyncio.run(shoot_train(DARK, size, args.out)))
    for size in INSIDE_SIZES if args.only in (None, "inside") and not args.model else ():
        for path in asyncio.run(shoot_inside(DARK, size, args.out)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
