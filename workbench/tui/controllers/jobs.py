"""Downloads and quantizations: the app's background jobs, which outlive the screens.

A download runs in a thread worker (``models.hub.fetch_model`` does no MLX work); a
quantization on the engine thread (``models.quantize.quantize_job``), and its new folder is
remembered (``workbench.recent``) so that it shows in the models list. Either way the job
reports through an ``EventStream`` the app awaits (``follow``), as every engine request and
child job does: each progress event replaces the ``Job``'s ``latest`` and repaints the
status line (the hub reports at most 10 times a second, and a stream wakes the UI once per
batch), and how a job ended is said once (``JobFinished``), when it ends.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import WorkbenchError
from engine import EngineError, EventStream
from engine.events import Error, Result

from ... import recent
from ..messages import JobFinished

if TYPE_CHECKING:
    from engine import EngineAPI
    from models.catalog import ModelEntry

    from ..app import WorkbenchApp

JOB_REPAINT_S = 0.1  # how often the screens' job panels repaint (their own timers)


@dataclass
class Job:
    """A download or a quantization the app runs in the background.

    Its stream's progress events replace ``latest`` (on the UI thread). ``cancel`` stops
    the job (what a download fetched is kept).
    """

    kind: str  # download | quantize
    target: str  # the repo id, or the folder being written
    cancel: threading.Event = field(default_factory=threading.Event)
    latest: Any = None  # the last DownloadProgress / QuantizeProgress
    state: str = "running"  # running | done | cancelled | failed
    message: str = ""  # the final line, once it ended
    result: Path | None = None
    announced: bool = False  # the app has said how it ended

    @property
    def running(self) -> bool:
        return self.state == "running"

    def finish(self, state: str, message: str, result: Path | None = None) -> None:
        self.message, self.result = message, result
        self.state = state  # last: a reader that sees the state sees the message too

    def line(self) -> str:
        """One line for people: what is happening (bytes, speed, time left) or how it ended."""
        if not self.running:
            return self.message
        p = self.latest
        if p is None:
            return f"{self.target}: starting…"
        if self.kind == "download":
            return str(p.line())
        return str(p.message)

    def amounts(self) -> tuple[int, int]:
        p = self.latest
        if p is None:
            return 0, 0
        return int(p.done), int(p.total)


class JobsController:
    def __init__(self, app: WorkbenchApp, engine: EngineAPI, recommended: str) -> None:
        self.app = app
        self.engine = engine
        self.recommended = recommended
        self.jobs: dict[str, Job] = {}  # the latest job of each kind, running or ended

    def job(self, kind: str) -> Job | None:
        return self.jobs.get(kind)

    def cancel_job(self, kind: str) -> None:
        job = self.jobs.get(kind)
        if job is not None and job.running:
            job.cancel.set()

    def cancel_all(self) -> None:
        """At exit: stop what runs; a download keeps what it fetched, for next time."""
        for job in self.jobs.values():
            job.cancel.set()

    def _busy(self, kind: str) -> str | None:
        job = self.jobs.get(kind)
        if job is not None and job.running:
            what = "download" if kind == "download" else "quantization"
            return (f"A {what} is running already ({job.target}): wait for it, or cancel it "
                    "(Ctrl+Z in the models screen)")
        return None

    # -- downloads -----------------------------------------------------------------------
    def start_download(self, repo_id: str) -> str | None:
        """Start downloading ``repo_id`` into the Hugging Face cache; None, or why not."""
        from models.hub import looks_like_repo_id

        repo = repo_id.strip()
        if not repo:
            return ("Type a model folder or a Hugging Face repo id first, for example "
                    + self.recommended)
        if not looks_like_repo_id(repo):
            return (f"{repo!r} is not a Hugging Face repo id (owner/name, for example "
                    f"{self.recommended}) nor a model folder (/path or ~/path)")
        busy = self._busy("download")
        if busy:
            return busy
        stream: EventStream[Path] = EventStream()
        job = Job("download", repo, stream.cancel_flag)
        self.jobs["download"] = job
        self.app.run_worker(partial(_fetch_into, stream, repo), thread=True, group="download",
                            exclusive=True, exit_on_error=False,
                            description="download the model")
        self.app.run_worker(self._download(job, stream), group="download-watch",
                            exit_on_error=False, description="show the download")
        self._show()
        return None

    async def _download(self, job: Job, stream: EventStream[Path]) -> None:
        from common.formats import fmt_bytes
        from engine import follow
        from models.hub import DownloadProgress

        try:
            path = await follow(stream, {DownloadProgress: partial(self._progress, job)})
        except EngineError as exc:
            self._ended(job, "cancelled" if exc.kind == "cancelled" else "failed", str(exc))
            return
        total = job.latest.total if job.latest is not None else 0
        size = f" ({fmt_bytes(total)})" if total else ""
        self._ended(job, "done", f"{job.target} downloaded{size}: Enter on it in the models "
                    "screen loads it", path)

    # -- quantizations -------------------------------------------------------------------
    def start_quantize(self, entry: ModelEntry, bits: int) -> str | None:
        """Quantize the model ``entry`` to ``bits`` into a new folder; None, or why not."""
        from models.quantize import quantize_job

        if entry.problem:
            return f"{entry.name} cannot be loaded, so it cannot be quantized: {entry.problem}"
        if entry.quant_bits:
            return (f"{entry.name} is quantized already ({entry.quant_bits} bits): quantize a "
                    "full-precision model instead")
        busy = self._busy("quantize")
        if busy:
            return busy
        target = quantize_target(entry, bits)
        stream = self.engine.submit(quantize_job(str(entry.path), str(target), bits, 64))
        job = Job("quantize", str(target), stream.cancel_flag)
        self.jobs["quantize"] = job
        self.app.run_worker(self._quantize(job, stream), group="quantize",
                            exit_on_error=False, description="quantize the model")
        self._show()
        return None

    async def _quantize(self, job: Job, stream: EventStream[Path]) -> None:
        from engine import follow
        from models.quantize import QuantizeProgress

        try:
            path = await follow(stream, {QuantizeProgress: partial(self._progress, job)})
        except EngineError as exc:
            self._ended(job, "cancelled" if exc.kind == "cancelled" else "failed", str(exc))
            return
        folder = recent.add_model_folder(path)
        self._ended(job, "done", f"{folder.name} written ({folder}): it is in the models list "
                    "now", folder)

    # -- showing them --------------------------------------------------------------------
    def _progress(self, job: Job, event: Any) -> None:
        job.latest = event
        self._show()

    def _ended(self, job: Job, state: str, message: str, result: Path | None = None) -> None:
        """How ``job`` ended: kept on it, said once, and the status line updated."""
        job.finish(state, message, result)
        if not job.announced:
            job.announced = True
            self.app.post_message(JobFinished(job.kind, job.message, job.state == "done"))
        self._show()

    def _show(self) -> None:
        """The running job's line in the status line (none once they have all ended)."""
        running = [j for j in self.jobs.values() if j.running]
        if running:
            self.app.update_status(job=running[0].line(), job_progress=running[0].amounts())
        else:
            self.app.update_status(job="", job_progress=None)


def _fetch_into(stream: EventStream[Path], repo: str) -> None:
    """A download (a thread worker's body): its progress and its end, on ``stream``."""
    from models.hub import DownloadCancelled, fetch_model

    try:
        path = fetch_model(repo, progress=stream.put, cancel=stream.cancel_flag)
    except DownloadCancelled as exc:
        stream.put(Error(str(exc), "cancelled"))
    except WorkbenchError as exc:
        stream.put(Error(str(exc), exc.kind))
    except Exception as exc:  # noqa: BLE001 - the job must end, whatever happened
        stream.put(Error(f"download of {repo} failed: {type(exc).__name__}: {exc}", "download"))
    else:
        stream.put(Result(path))


def quantize_target(entry: ModelEntry, bits: int) -> Path:
    """A new folder in the first model folder: NAME-4bit, NAME-4bit-2..."""
    from sessions import sanitize_name

    base = recent.model_folders()[0]
    stem = sanitize_name(f"{entry.name.rsplit('/', 1)[-1]}-{bits}bit", default="model")
    target, n = base / stem, 1
    while target.exists():
        n += 1
        target = base / f"{stem}-{n}"
    return target
