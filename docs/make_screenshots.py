"""Screenshots of the workbench for the docs, taken by the app itself.

The real app runs headless on a real model (the demo model unless ``--model`` is given),
answers a real message, and saves SVG screenshots with ``App.export_screenshot``: the main
screen in both workbench themes, the settings and the help screen.

    python docs/make_screenshots.py                    # demo model -> docs/screenshots/
    python docs/make_screenshots.py --model mlx-community/Qwen3-0.6B-4bit
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from engine import SamplingParams
from themes import DARK, LIGHT
from workbench.config import Config
from workbench.runtime import demo_model_path
from workbench.tui.app import WorkbenchApp, make_args

SIZE = (132, 42)
PROMPT = "Explain Python list comprehensions with a short example."


async def _until(condition, what: str, timeout: float = 300.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise SystemExit(f"make_screenshots: gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def shoot(model: str, theme: str, out: Path, dialogs: bool) -> list[Path]:
    params = SamplingParams(temperature=0.0, seed=0, max_tokens=160)
    app = WorkbenchApp(make_args(model=model, theme=theme), config=Config(theme=theme),
                       params=params)
    saved = []

    def save(name: str) -> None:
        path = out / f"{name}-{theme}.svg"
        path.write_text(app.export_screenshot(title="MLX Workbench"), encoding="utf-8")
        saved.append(path)

    async with app.run_test(size=SIZE) as pilot:
        await _until(lambda: app.models.load_finished, "the model to load")
        if not app.models.ready:
            raise SystemExit(f"make_screenshots: the model did not load: {app.status.text}")
        await pilot.press(*PROMPT)
        await pilot.press("enter")
        view = app.chat_view
        await _until(lambda: view.last_assistant() is not None
                     and view.last_assistant().done and not app.chat.replying,  # type: ignore[union-attr]
                     "the reply")
        app.prompt.cursor_blink = False
        await pilot.pause(0.5)  # let the meters repaint once more
        save("main")
        if dialogs:
            await pilot.press("f2")
            await pilot.pause(0.3)
            save("settings")
            await pilot.press("escape", "f1")
            await pilot.pause(0.3)
            save("help")
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", help="a model folder or repo id (default: the demo)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("screenshots"))
    args = parser.parse_args(argv)
    model = args.model or str(demo_model_path(lambda msg: print(msg, file=sys.stderr)))
    args.out.mkdir(parents=True, exist_ok=True)
    for theme, dialogs in ((DARK, True), (LIGHT, False)):
        for path in asyncio.run(shoot(model, theme, args.out, dialogs)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
