"""The models screen: every model on this machine, and getting new ones.

It lists what ``models.catalog.scan_models`` finds (the Hugging Face cache, the user's model
folders, the recently used models, recently used first) with the facts a user picks by: size
on disk, bits per weight, parameters, context length and whether it fits in memory now. The
scan reads only small files, in a thread, never MLX. Enter asks the app to load the chosen
model; a local model folder typed in the download field is opened (offline, the only way to
a model that is not listed), a repo id there is downloaded, and the highlighted model can be
quantized to 4 or 8 bits.

Downloads and quantizations are the app's jobs (``tui/controllers/jobs.py``), not the screen's:
they go on when the screen is closed. The screen shows them with a ``JobPanel``, repainted at
10 Hz from the job's latest progress, so a fast download never floods the UI with updates.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Static

from common.formats import fmt_bytes, gb
from models.resolve import same_location

from ...keymap import MODELS_BINDINGS
from ..controllers.jobs import JOB_REPAINT_S, Job
from ..widgets.columns_hint import ColumnsHint

if TYPE_CHECKING:
    from models.catalog import ModelEntry, PartialDownload

FIT_WORDS = {"fits": "yes", "tight": "tight", "too-big": "NO", "?": "?"}
WHERE_WORDS = {"hf-cache": "HF cache", "folder": "folder", "recent": "recent"}


class JobHost(Protocol):
    """What the models and welcome screens ask of the app (``tui/controllers/models.py``)."""

    @property
    def model_info(self) -> Any: ...

    def job(self, kind: str) -> Job | None: ...

    def start_download(self, repo_id: str) -> str | None: ...

    def start_quantize(self, entry: ModelEntry, bits: int) -> str | None: ...

    def cancel_job(self, kind: str) -> None: ...

    def scan_models(self) -> tuple[list[ModelEntry], list[PartialDownload]]: ...


class JobPanel(Vertical):
    """A job's line, its progress bar (bytes), and a button to cancel it."""

    @dataclass
    class CancelPressed(Message):
        kind: str

    def __init__(self, kind: str, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="job-panel")
        self.kind = kind
        self._shown: tuple[Any, ...] = ()
        self.display = False

    def compose(self) -> ComposeResult:
        with Horizontal(classes="job-row"):
            yield ProgressBar(total=None, show_eta=False, classes="job-bar")
            yield Button("Cancel", classes="job-cancel", compact=True)
        yield Static("", classes="job-line", markup=False)

    @property
    def bar(self) -> ProgressBar:
        return self.query_one(ProgressBar)

    @property
    def text(self) -> str:
        return str(self.query_one(".job-line", Static).render())

    def show(self, job: Job | None) -> None:
        """Repaint from ``job`` (only what changed since the last call)."""
        if job is None:
            self.display = False
            return
        done, total = job.amounts()
        now = (id(job), job.state, job.line(), done, total)
        if now == self._shown:
            return
        self._shown = now
        self.display = True
        self.query_one(".job-line", Static).update(job.line())
        self.set_class(job.state in ("failed", "cancelled"), "-failed")
        self.query_one(".job-cancel", Button).display = job.running
        bar = self.bar
        # A job that failed or was cancelled keeps its line (why), not a half-full bar.
        self.query_one(".job-row").display = job.state in ("running", "done")
        if job.state == "done":
            bar.update(total=max(total, 1), progress=max(total, 1))
        elif total:
            bar.update(total=total, progress=done)
        else:
            bar.update(total=None)

    @on(Button.Pressed, ".job-cancel")
    def _cancel(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.CancelPressed(self.kind))


def model_row(entry: ModelEntry, loaded: bool) -> tuple[str, ...]:
    """One table row: marker, name, parameters, bits, size, context, fits, where."""
    mark = "●" if loaded else "*" if entry.recent_rank is not None else ""
    name = entry.name + (" (demo)" if entry.is_demo else "")
    return (
        mark,
        name,
        entry.params_label,
        f"{entry.bits_per_weight:.1f}" if entry.bits_per_weight else "?",
        gb(entry.size_on_disk),
        str(entry.context_length or "?"),
        FIT_WORDS.get(entry.fit, entry.fit) if entry.supported else "-",
        WHERE_WORDS.get(entry.source, entry.source),
    )


def local_folder(text: str) -> Path | None:
    """The folder ``text`` names when it is a path rather than a repo id (it exists, or it
    starts like a path: ``/``, ``~``, ``.``)."""
    text = text.strip()
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.exists() or text.startswith(("/", "~", ".")) else None


def entry_details(entry: ModelEntry, loaded: bool) -> str:
    """The line under the table for the highlighted model."""
    if entry.problem:
        return f"{entry.name} cannot be loaded: {entry.problem}"
    quant = (f"{entry.quant_bits}-bit, group {entry.group_size}" if entry.quant_bits
             else "not quantized: 4 or 8 makes a smaller copy")
    need = (f"needs about {gb(entry.need_bytes)} with a 4096-token context, "
            f"{gb(entry.available_bytes)} free")
    state = "loaded now · " if loaded else ""
    return f"{state}{entry.architecture}, {quant} · {need} · {entry.path}"


class ModelsScreen(ModalScreen[str | None]):
    """Dismisses with the spec of the model to load (None: nothing to load)."""

    BINDINGS = MODELS_BINDINGS  # type: ignore[assignment]
    CSS_PATH: ClassVar[str] = "screens.tcss"

    def __init__(self, host: JobHost) -> None:
        super().__init__()
        self.host = host
        self.entries: list[ModelEntry] = []
        self.shown: list[ModelEntry] = []
        self.partials: list[PartialDownload] = []
        self.scanned = False  # the first scan has filled the table
        # Jobs that had ended when the screen opened, or whose end it has shown.
        self._ended = {id(job) for job in (host.job("download"), host.job("quantize"))
                       if job is not None and not job.running}
        self._select_after_scan: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="models-dialog", classes="dialog"):
            yield Label("Models", classes="dialog-title")
            yield Input(placeholder="filter: words in the name, architecture, bits (4bit)…",
                        id="models-filter", compact=True)
            table: DataTable[str] = DataTable(id="models-table", cursor_type="row",
                                              zebra_stripes=True)
            yield table
            yield ColumnsHint(table, id="models-columns")
            yield Static("looking for models…", id="models-details", markup=False)
            with Horizontal(id="models-download-row"):
                yield Label("Open or download", classes="section")
                yield Input(placeholder="a model folder (/path, ~/path) or a Hugging Face repo "
                                        "id: owner/name",
                            id="models-repo", compact=True)
                yield Button("Go", id="models-download", compact=True)
            yield JobPanel("download", id="models-download-job")
            yield JobPanel("quantize", id="models-quantize-job")
            yield Static("", id="models-message", markup=False)
            yield Static("Enter loads it (the conversation is kept) · 4 / 8 writes a 4- or "
                         "8-bit copy · / filter · Ctrl+D open a folder or download · Ctrl+Z "
                         "cancels · Esc closes",
                         classes="dialog-hint", markup=False)

    @property
    def table(self) -> DataTable[str]:
        return self.query_one("#models-table", DataTable)

    def on_resize(self) -> None:
        self.call_after_refresh(self.query_one("#models-columns", ColumnsHint).check)

    def on_mount(self) -> None:
        self.table.add_columns("", "model", "params", "bits", "size", "context", "fits",
                               "where")
        self.table.focus()
        self._tick()
        self.set_interval(JOB_REPAINT_S, self._tick)
        self.rescan()

    # -- the list ------------------------------------------------------------------------
    @work(exclusive=True, group="models-scan", exit_on_error=False,
          description="look for models")
    async def rescan(self) -> None:
        entries, partials = await asyncio.to_thread(self.host.scan_models)
        self.entries, self.partials = entries, partials
        self.scanned = True
        self._fill()

    def _loaded(self, entry: ModelEntry) -> bool:
        info = self.host.model_info
        return info is not None and same_location(entry.path, info.path)

    def _fill(self) -> None:
        from models.catalog import filter_models

        text = self.query_one("#models-filter", Input).value
        self.shown = filter_models(self.entries, text) if text.strip() else list(self.entries)
        table = self.table
        keep = self._select_after_scan or self._highlighted_key()
        table.clear()
        for entry in self.shown:
            table.add_row(*model_row(entry, self._loaded(entry)), key=str(entry.path))
        for i, entry in enumerate(self.shown):
            if keep is not None and keep in (str(entry.path), entry.spec, entry.repo_id):
                table.move_cursor(row=i)
                self._select_after_scan = None
                break
        self._show_details()

    def _highlighted_key(self) -> str | None:
        entry = self.highlighted
        return str(entry.path) if entry is not None else None

    @property
    def highlighted(self) -> ModelEntry | None:
        row = self.table.cursor_row
        if not self.shown or row < 0 or row >= len(self.shown):
            return None
        return self.shown[row]

    def _show_details(self) -> None:
        details = self.query_one("#models-details", Static)
        entry = self.highlighted
        if entry is not None:
            details.update(entry_details(entry, self._loaded(entry)))
        elif not self.scanned:
            details.update("looking for models…")
        elif self.entries:
            details.update("no model matches the filter")
        else:
            details.update("No models found in the Hugging Face cache or your model folders "
                           "yet: open a folder or download one below.")
        notes = [f"unfinished download: {p.repo_id} ({fmt_bytes(p.bytes_on_disk)} so far): "
                 "download it again to continue" for p in self.partials]
        if notes and entry is None:
            details.update("\n".join([str(details.render()), *notes]))

    @on(Input.Changed, "#models-filter")
    def _filter_changed(self) -> None:
        if self.scanned:
            self._fill()

    @on(Input.Submitted, "#models-filter")
    def _filter_done(self) -> None:
        self.table.focus()

    @on(DataTable.RowHighlighted, "#models-table")
    def _row_highlighted(self) -> None:
        self._show_details()

    @on(DataTable.RowSelected, "#models-table")
    def _row_selected(self) -> None:
        entry = self.highlighted
        if entry is None:
            return
        if entry.problem:
            self.say(f"{entry.name} cannot be loaded: {entry.problem}", error=True)
            return
        if self._loaded(entry):
            self.say(f"{entry.name} is the model loaded now.")
            return
        self.dismiss(entry.spec)

    # -- jobs ----------------------------------------------------------------------------
    def _tick(self) -> None:
        for kind in ("download", "quantize"):
            job = self.host.job(kind)
            self.query_one(f"#models-{kind}-job", JobPanel).show(job)
            if job is not None and job.state == "done" and id(job) not in self._ended:
                # A new model: show it, highlighted.
                self._ended.add(id(job))
                self._select_after_scan = (job.target if kind == "download"
                                           else str(job.result or job.target))
                self.rescan()

    @on(JobPanel.CancelPressed)
    def _cancel_pressed(self, event: JobPanel.CancelPressed) -> None:
        self.host.cancel_job(event.kind)

    @on(Button.Pressed, "#models-download")
    @on(Input.Submitted, "#models-repo")
    def _download(self) -> None:
        field = self.query_one("#models-repo", Input)
        folder = local_folder(field.value)
        if folder is not None:
            self._open_folder(folder)
            return
        problem = self.host.start_download(field.value)
        if problem:
            self.say(problem, error=True)
        else:
            self.say("")
            self.table.focus()

    def _open_folder(self, folder: Path) -> None:
        """Load the model in ``folder`` (the app does, as for a row), or say why not."""
        from common.errors import WorkbenchError
        from models.resolve import check_model_folder

        try:
            check_model_folder(folder)
        except WorkbenchError as exc:
            self.say(str(exc), error=True)
            return
        info = self.host.model_info
        if info is not None and same_location(folder, info.path):
            self.say(f"{folder} is the model loaded now.")
            return
        self.dismiss(str(folder.resolve()))

    def action_quantize(self, bits: int) -> None:
        entry = self.highlighted
        if entry is None:
            self.say("Highlight a model to quantize first.", error=True)
            return
        problem = self.host.start_quantize(entry, bits)
        self.say(problem or "", error=bool(problem))

    def action_cancel_job(self) -> None:
        for kind in ("download", "quantize"):
            job = self.host.job(kind)
            if job is not None and job.running:
                self.host.cancel_job(kind)

    def action_focus_filter(self) -> None:
        self.query_one("#models-filter", Input).focus()

    def action_focus_download(self) -> None:
        self.query_one("#models-repo", Input).focus()

    def action_rescan(self) -> None:
        self.rescan()

    def action_close_models(self) -> None:
        self.dismiss(None)

    def say(self, text: str, error: bool = False) -> None:
        message = self.query_one("#models-message", Static)
        message.update(text)
        message.set_class(error, "-error")
