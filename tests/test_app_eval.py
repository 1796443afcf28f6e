"""The Eval screen, driven by a Pilot on the fake engine.

The real evaluation (``jobs.evaluate.evaluate_on_engine``) needs a model on the
engine thread; here the app's training controller is given ``fake_evaluate``, which runs on
the fake engine's thread through ``submit`` exactly as the real one does (events
``EvalReply``/``EvalProgress``, then the ``EvalReport``), with replies that say which
candidate wrote them. What the screen does with that (columns side by side, stats, val
loss and perplexity, exports to new files) is what is tested.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from test_app import fake_app, until
from textual.pilot import Pilot
from textual.widgets import Button, Input, Select, Static

from jobs.evaluate import EvalProgress, EvalReply, EvalReport
from tests.fake_engine import FakeEngine, fake_adapter
from workbench.tui.app import WorkbenchApp
from workbench.tui.screens.evaluate import EvalScreen

SIZE = (120, 36)
SMALL = (80, 24)
ADAPTERS = "/fake/adapters"


def fake_evaluate(engine: Any, candidates: Any, prompts: Any, params: Any, *,
                  valid_data: str | None = None, **_: Any) -> Any:
    """``evaluate_on_engine`` on the fake engine: every candidate answers every prompt."""
    calls.append({"candidates": list(candidates), "prompts": prompts, "params": params,
                  "valid_data": valid_data})

    def job(_core: Any, emit: Any, _cancel: Any) -> EvalReport:
        replies, total = [], len(candidates) * len(prompts)
        for n, cand in enumerate(candidates):
            for i, messages in enumerate(prompts):
                reply = EvalReply(i, cand.label, f"{cand.label} on {messages[-1]['content']}",
                                  4 + n, 100.0 + 10 * n)
                replies.append(reply)
                emit(reply)
                emit(EvalProgress(len(replies), total, cand.label))
        losses = {c.label: (2.0 - 0.25 * n if valid_data else None)
                  for n, c in enumerate(candidates)}
        return EvalReport(model="fake-model", candidates=list(candidates),
                          prompts=[p[-1]["content"] for p in prompts], replies=replies,
                          val_loss=losses,
                          perplexity={k: math.exp(v) if v is not None else None
                                      for k, v in losses.items()},
                          conversations=[list(p) for p in prompts], valid_data=valid_data,
                          seconds=0.5)
    return engine.submit(job)


calls: list[dict[str, Any]] = []


def eval_app() -> WorkbenchApp:
    fake = FakeEngine(adapters=[fake_adapter("tone-a", f"{ADAPTERS}/tone-a"),
                                fake_adapter("tone-b", f"{ADAPTERS}/tone-b")])
    app = fake_app(fake, adapters=ADAPTERS, adapter=[f"{ADAPTERS}/tone-b"])
    app.training.evaluate = fake_evaluate
    calls.clear()
    return app


async def open_eval(pilot: Pilot, app: WorkbenchApp) -> EvalScreen:
    await until(pilot, lambda: app.models.ready and len(app.adapters.infos) == 2, "the load")
    await pilot.press("f7")
    await until(pilot, lambda: isinstance(app.screen, EvalScreen), "the Eval screen")
    screen = app.screen
    assert isinstance(screen, EvalScreen)
    return screen


def text(widget: Static) -> str:
    return str(widget.render())


async def test_eval_shows_replies_side_by_side_and_exports_new_files(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "valid.jsonl").write_text(
        json.dumps({"prompt": "Say hi"}) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "And bye?"}]}) + "\n")
    app = eval_app()
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = await open_eval(pilot, app)
        assert app.chat.held  # the chat waits while the evaluation uses the engine
        screen.query_one("#eval-prompts", Input).value = str(data)
        screen.query_one("#eval-pick-1", Select).value = f"{ADAPTERS}/tone-b"
        screen.query_one("#eval-scale-1", Input).value = "0.5"
        await pilot.pause()
        await pilot.press("ctrl+s")
        export = screen.query_one("#eval-export-md", Button)
        await until(pilot, lambda: not export.disabled, "the report")
        call = calls[0]
        assert [c.label for c in call["candidates"]] == ["base model", "tone-a ×1",
                                                         "tone-b ×0.5"]
        assert call["candidates"][2].adapter == f"{ADAPTERS}/tone-b"
        assert call["candidates"][2].scale == 0.5
        assert call["valid_data"] == str(data) and call["params"].temperature == 0.0
        # Each prompt's replies are in one row, one column per candidate, left to right.
        for p, prompt in enumerate(("Say hi", "And bye?")):
            cells = [screen.query_one(f"#eval-cell-{p}-{i}", Static) for i in range(3)]
            assert [text(c).split("\n")[0] for c in cells] == [
                f"base model on {prompt}", f"tone-a ×1 on {prompt}",
                f"tone-b ×0.5 on {prompt}"]
            assert "tok/s" in text(cells[0])
            ys = {c.region.y for c in cells}
            xs = [c.region.x for c in cells]
            assert len(ys) == 1 and xs == sorted(xs) and len(set(xs)) == 3
        heads = [text(screen.query_one(f"#eval-head-{i}", Static)) for i in range(3)]
        assert heads[0] == "base model\n100.0 tok/s · val loss 2.000 · ppl 7.39"
        assert heads[2] == "tone-b ×0.5\n120.0 tok/s · val loss 1.500 · ppl 4.48"
        # Exports: a new file each time, never one written over.
        md = screen.export("md")
        md_again = screen.export("md")
        js = screen.export("json")
        assert md and md_again and js and len({md, md_again, js}) == 3
        assert md.read_text() == md_again.read_text()
        assert "| tone-b ×0.5 |" in md.read_text() and "**tone-a ×1**" in md.read_text()
        report = json.loads(js.read_text())
        assert report["schema"] == "workbench-eval" and len(report["replies"]) == 6
        assert md.parent == Path(app.config.adapters_path()).parent / "evals"
        screen.query_one("#eval-export-json", Button).focus()
        await pilot.press("enter")  # the keys (a click there would hit the notifications)
        await until(pilot, lambda: len(list(md.parent.glob("*.json"))) == 2, "the export")
        # Esc closes; the chat and the adapter that was active are back.
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, EvalScreen), "the close")
        assert not app.chat.held
        assert app.engine.adapter is not None and app.engine.adapter.name == "tone-b"


async def test_eval_refuses_a_bad_prompt_file_and_bad_picks_in_one_line(tmp_path) -> None:
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "ok"}\nnot json\n{"text": "no prompt"}\n')
    app = eval_app()
    async with app.run_test(size=SMALL, notifications=True) as pilot:
        screen = await open_eval(pilot, app)
        note = screen.query_one("#eval-note", Static)
        await pilot.press("ctrl+s")
        assert text(note).startswith("Not run: give a prompt set")
        screen.query_one("#eval-prompts", Input).value = str(bad)
        await pilot.pause()
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "not valid JSON" in text(note), "the refusal")
        assert "\n" not in text(note) and "(and 1 more)" in text(note)
        screen.query_one("#eval-pick-1", Select).value = f"{ADAPTERS}/tone-a"
        await pilot.pause()
        await pilot.press("ctrl+s")
        assert "tone-a ×1 is picked twice" in text(note)
        screen.query_one("#eval-scale-1", Input).value = "3"
        await pilot.pause()
        await pilot.press("ctrl+s")
        assert "from 0 to 2" in text(note)
        assert not calls
        # Every control is reachable with Tab; Esc closes.
        seen = set()
        for _ in range(20):
            screen.focus_next()
            if app.focused is not None and app.focused.id:
                seen.add(app.focused.id)
        assert {"eval-base", "eval-prompts", "eval-pick-0", "eval-scale-0", "eval-pick-3",
                "eval-run", "eval-close"} <= seen
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, EvalScreen), "the close")
        assert app.is_running and not app.chat.held
