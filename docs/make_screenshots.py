"""Screenshots of the workbench for the docs, taken by the app itself.

By default the app runs headless on the scripted fake engine (``tests/fake_engine.py``: no
MLX, the same reply every time) with the live meters showing fixed numbers, so the
screenshots only change when the app does. ``--model`` runs it on a real model instead
(greedy decoding; the meters show what that machine measured). It answers one message
and saves SVG screenshots with ``App.export_screenshot``: the main screen in both workbench
themes and at 80x24, the settings and the help screen.

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
from workbench.config import Config  # noqa: E402
from workbench.tui.app import WorkbenchApp, make_args  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", help="a model folder or repo id (default: the "
                        "scripted fake engine)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("screenshots"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = ((DARK, SIZE, ("settings", "help")), (LIGHT, SIZE, ()), (DARK, SMALL, ()))
    for theme, size, shots in runs:
        for path in asyncio.run(shoot(args.model, theme, size, args.out, shots)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
