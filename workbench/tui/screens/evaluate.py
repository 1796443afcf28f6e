"""The Eval screen: the base model and up to four adapters (or scales) on one prompt set.

Pick the candidates (the base model, and adapters the app knows, each at a scale), a prompt
set (a JSONL file of prompts, or a data folder: its validation set, which also gives each
candidate's validation loss and perplexity), and run. The evaluation runs on the engine
thread (``jobs.evaluate.evaluate_on_engine``, which puts the adapter that was
active back afterwards); each reply shows in its candidate's column as soon as it is
written, with its tokens/s, so the columns read side by side (as in compare). The report
exports to Markdown or JSON, always into a new file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from common.errors import WorkbenchError
from engine import EngineError, Notice, follow

from ...keymap import EVAL_BINDINGS
from ..labels import adapter_label

if TYPE_CHECKING:
    from engine import EngineAPI, SamplingParams
    from jobs.evaluate import EvalCandidate, EvalReport

PICKS = 4  # adapters besides the base model
BASE = "base model"


@dataclass(frozen=True)
class AdapterOption:
    """An adapter the app knows, offered as a candidate."""

    name: str
    path: str


Evaluate = Callable[..., Any]  # evaluate_on_engine's signature


def _real_evaluate(*args: Any, **kwargs: Any) -> Any:
    from jobs.evaluate import evaluate_on_engine

    return evaluate_on_engine(*args, **kwargs)


def new_file(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``stem-2.suffix``...: a name no file has yet."""
    target, n = folder / f"{stem}{suffix}", 1
    while target.exists():
        n += 1
        target = folder / f"{stem}-{n}{suffix}"
    return target


class EvalScreen(ModalScreen[None]):
    BINDINGS = EVAL_BINDINGS  # type: ignore[assignment]
    CSS_PATH: ClassVar[str] = "screens.tcss"

    def __init__(self, engine: EngineAPI, adapters: Sequence[AdapterOption],
                 params: SamplingParams, *, model: str = "", prompts: str = "",
                 evaluate: Evaluate | None = None, export_folder: Path | None = None) -> None:
        super().__init__()
        self.engine = engine
        self.adapters = list(adapters)
        self.params = params
        self.model = model
        self.default_prompts = prompts
        self.evaluate = evaluate or _real_evaluate
        self.export_folder = export_folder
        self.report: EvalReport | None = None
        self.candidates: list[EvalCandidate] = []
        self.running = False
        self.closing = False
        self._stream: Any = None

    def compose(self) -> ComposeResult:
        # Values are the paths (strings: Select.NULL is no pick).
        options = [(a.name, a.path) for a in self.adapters]
        with Vertical(id="eval-dialog", classes="dialog"):
            yield Label(f"Evaluate adapters on {self.model or 'the loaded model'}",
                        classes="dialog-title", markup=False)
            with Horizontal(id="eval-top", classes="train-row"):
                yield Checkbox(BASE, True, id="eval-base", compact=True)
                yield Label("prompts", classes="train-label")
                yield Input(self.default_prompts, id="eval-prompts", compact=True,
                            placeholder="prompts.jsonl, or a data folder (its validation "
                                        "set, and val loss)")
            with Grid(id="eval-picks"):
                for n in range(PICKS):
                    first = self.adapters[0].path if n == 0 and self.adapters else Select.NULL
                    yield Select(options, id=f"eval-pick-{n}", compact=True,
                                 prompt="no adapter", value=first)
                    yield Input("1", id=f"eval-scale-{n}", compact=True,
                                placeholder="×", classes="eval-scale")
            yield Static("Pick the candidates and a prompt set, then Run.", id="eval-note",
                         markup=False)
            yield VerticalScroll(id="eval-results")
            with Horizontal(id="eval-buttons"):
                yield Button("Run", id="eval-run", variant="primary", compact=True)
                yield Button("Export Markdown", id="eval-export-md", compact=True,
                             disabled=True)
                yield Button("Export JSON", id="eval-export-json", compact=True,
                             disabled=True)
                yield Button("Close", id="eval-close", compact=True)

    def on_mount(self) -> None:
        self.query_one("#eval-prompts", Input).focus()

    def _note(self, text: str, error: bool = False) -> None:
        note = self.query_one("#eval-note", Static)
        note.update(text)
        note.set_class(error, "-error")

    # -- choosing ------------------------------------------------------------------------
    def chosen(self) -> list[EvalCandidate]:
        """The candidates picked, base first; ``ValueError`` with what is wrong."""
        from jobs.evaluate import EvalCandidate

        out: list[EvalCandidate] = []
        if self.query_one("#eval-base", Checkbox).value:
            out.append(EvalCandidate(BASE))
        for n in range(PICKS):
            value = self.query_one(f"#eval-pick-{n}", Select).value
            adapter = next((a for a in self.adapters if a.path == value), None)
            if adapter is None:
                continue
            text = self.query_one(f"#eval-scale-{n}", Input).value.strip() or "1"
            try:
                scale = float(text)
            except ValueError:
                raise ValueError(f"the scale of {adapter.name} must be a number from 0 to 2, "
                                 f"not {text!r}") from None
            if not 0 <= scale <= 2:
                raise ValueError(f"the scale of {adapter.name} must be from 0 to 2 (times "
                                 f"as trained), not {text}")
            label = adapter_label(adapter.name, scale)
            if any(c.label == label for c in out):
                raise ValueError(f"{label} is picked twice: pick each adapter and scale once")
            out.append(EvalCandidate(label, adapter.path, scale))
        if not out:
            raise ValueError("pick the base model or at least one adapter")
        return out

    # -- running -------------------------------------------------------------------------
    @on(Button.Pressed, "#eval-run")
    async def action_run_eval(self) -> None:
        if self.running:
            return
        try:
            candidates = self.chosen()
        except ValueError as exc:
            self._note(f"Not run: {exc}", error=True)
            return
        source = self.query_one("#eval-prompts", Input).value.strip()
        if not source:
            self._note("Not run: give a prompt set: a .jsonl file of prompts, or a data "
                       "folder (its validation set)", error=True)
            return
        from jobs.evaluate import load_prompts

        try:
            prompts = await asyncio.to_thread(load_prompts, source)
        except WorkbenchError as exc:
            lines = str(exc).splitlines()
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            self._note(f"Not run: {lines[0] if lines else exc}{more}", error=True)
            return
        valid = source if Path(source).expanduser().is_dir() else None
        self.candidates, self.report = candidates, None
        await self._lay_out(candidates, [p[-1]["content"] for p in prompts])
        self.running = True
        self._buttons()
        self._note(f"Running {len(candidates)} candidates on {len(prompts)} prompts"
                   + (" and the validation loss" if valid else "") + " (Esc stops)…")
        self.run_eval(candidates, prompts, valid)

    async def _lay_out(self, candidates: Sequence[EvalCandidate], prompts: Sequence[str]
                       ) -> None:
        """The results: a header per candidate, then each prompt's replies side by side."""
        results = self.query_one("#eval-results", VerticalScroll)
        await results.remove_children()
        rows: list[Any] = [Horizontal(*(Static(c.label, classes="eval-head", markup=False,
                                               id=f"eval-head-{i}")
                                        for i, c in enumerate(candidates)),
                                      classes="eval-row")]
        for p, prompt in enumerate(prompts):
            rows.append(Static(f"{p + 1}. {prompt}", classes="eval-prompt", markup=False))
            rows.append(Horizontal(*(Static("…", classes="eval-cell", markup=False,
                                            id=f"eval-cell-{p}-{i}")
                                     for i in range(len(candidates))), classes="eval-row"))
        await results.mount_all(rows)

    def cell(self, prompt_index: int, label: str) -> Static | None:
        for i, c in enumerate(self.candidates):
            if c.label == label:
                found = self.query(f"#eval-cell-{prompt_index}-{i}")
                return found.first(Static) if found else None
        return None

    @work(exclusive=True, group="eval", exit_on_error=False, description="evaluate adapters")
    async def run_eval(self, candidates: list[EvalCandidate], prompts: list[Any],
                       valid: str | None) -> None:
        from jobs.evaluate import EvalProgress, EvalReply

        def reply(event: EvalReply) -> None:
            cell = self.cell(event.prompt_index, event.label)
            if cell is not None:
                cell.update(f"{event.text}\n· {event.tokens} tok · "
                            f"{event.decode_tps:.1f} tok/s")

        def progress(event: EvalProgress) -> None:
            what = "validation loss" if event.stage == "loss" else "replies"
            self._note(f"{event.done}/{event.total} done ({what}; last: {event.label}) · "
                       "Esc stops")

        def notice(event: Notice) -> None:
            self.notify(event.message, title="Eval", severity="warning", timeout=8)

        kwargs: dict[str, Any] = {"valid_data": valid} if valid else {}
        try:
            self._stream = self.evaluate(self.engine, candidates, prompts, self.params,
                                         **kwargs)
            report = await follow(self._stream, {EvalReply: reply, EvalProgress: progress,
                                                 Notice: notice})
        except EngineError as exc:
            if not self.closing:
                cancelled = exc.kind == "cancelled"
                self._note("Stopped: no report." if cancelled else f"Failed: {exc}",
                           error=not cancelled)
            return
        finally:
            self.running = False
            self._stream = None
            if not self.closing:
                self._buttons()
        if self.closing:
            return
        self.report = report
        self._show_report(report)
        self._buttons()

    def _show_report(self, report: EvalReport) -> None:
        for i, c in enumerate(self.candidates):
            head = self.query_one(f"#eval-head-{i}", Static)
            tps = report.mean_decode_tps(c.label)
            loss, ppl = report.val_loss.get(c.label), report.perplexity.get(c.label)
            head.update(f"{c.label}\n{'–' if tps is None else f'{tps:.1f}'} tok/s · val loss "
                        f"{'–' if loss is None else f'{loss:.3f}'} · ppl "
                        f"{'–' if ppl is None else f'{ppl:.2f}'}")
            for p in range(len(report.prompts)):
                r = report.reply(p, c.label)
                cell = self.cell(p, c.label)
                if cell is not None and r is not None:
                    cell.update(f"{r.text}\n· {r.tokens} tok · {r.decode_tps:.1f} tok/s")
        self._note(f"Done in {report.seconds:.1f} s: export it to Markdown or JSON (a new "
                   "file each time).")
        self.query_one("#eval-export-md", Button).focus()

    def _buttons(self) -> None:
        self.query_one("#eval-run", Button).disabled = self.running
        done = self.report is not None and not self.running
        self.query_one("#eval-export-md", Button).disabled = not done
        self.query_one("#eval-export-json", Button).disabled = not done

    # -- export --------------------------------------------------------------------------
    def export(self, kind: str) -> Path | None:
        """Write the report to a new file (``.md`` or ``.json``); its path, or None."""
        from jobs.evaluate import write_new_file

        from ... import paths

        if self.report is None:
            return None
        folder = self.export_folder or paths.data_dir() / "evals"
        suffix = ".md" if kind == "md" else ".json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = new_file(folder, f"eval-{time.strftime('%Y%m%d-%H%M%S')}", suffix)
            text = self.report.to_markdown() if kind == "md" else self.report.to_json()
            path = write_new_file(target, text)
        except (WorkbenchError, OSError) as exc:
            self.notify(f"Not exported: {exc}", title="Eval", severity="error")
            return None
        self.notify(f"Exported to {path}", title="Eval", timeout=10)
        return path

    @on(Button.Pressed, "#eval-export-md")
    def _export_md(self) -> None:
        self.export("md")

    @on(Button.Pressed, "#eval-export-json")
    def _export_json(self) -> None:
        self.export("json")

    @on(Button.Pressed, "#eval-close")
    def action_close_eval(self) -> None:
        self.closing = True
        if self._stream is not None:
            self._stream.cancel()
        self.dismiss(None)
