"""Models in the app: the first-run welcome, the models screen, switching, downloads, quantizing.

``ModelActions`` is mixed into ``WorkbenchApp``. It owns what outlives the screens:

- switching the model mid-conversation (``Engine.load`` on the engine thread; the
  conversation stays and is prefilled on the new model with the next message, and the
  app's usual "model loaded" path repaints the panes and the memory gauges);
- downloads, in a thread worker (``models.hub.fetch_model`` does no MLX work), whose
  progress the worker only stores: the screens and the status line read it on their own
  10 Hz timers, so a fast download never floods the UI;
- quantizations, on the engine thread (``models.quantize.quantize_job``), whose new folder is
  remembered (``workbench.recent``) so that it shows in the models list;
- the recently used models: every successful load is remembered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
from textual import work
from textual.app import SystemCommand
from textual.screen import Screen

from engine import Error, LoadProgress, ModelInfo, ModelLoaded, Notice, Result
from engine.errors import WorkbenchError
from engine.stream import EventStream
from models.catalog import ModelEntry, PartialDownload
from models.hub import DownloadCancelled, looks_like_repo_id
from sessions import sanitize_name

from . import recent
from .app_host import AppHost
from .keymap import APP_BINDINGS, HELP_TEXT
from .screens.models import JOB_REPAINT_S, Job, ModelsScreen
from .screens.welcome import WelcomeChoice, WelcomeScreen


def model_spec(info: ModelInfo) -> str:
    """What to give ``Engine.load`` to get this model again: its repo id, else its folder."""
    if looks_like_repo_id(info.name) and not Path(info.name).exists():
        return info.name
    return info.path


def same_model(spec: str, path: str, name: str) -> bool:
    """Whether ``spec`` (a repo id or folder) names the model loaded from ``path``."""
    if spec == name:
        return True
    try:
        return recent.normalize_spec(spec) == recent.normalize_spec(path)
    except OSError:
        return False


class ModelActions(AppHost):
    """The app's model features (see the module docstring)."""

    _job_timer: Any = None
    _switching = False
    _job_in_status = False  # the status line shows a job's progress
    _welcome_choice: str | None = None  # a model chosen on the welcome screen, until loaded

    # -- first run -----------------------------------------------------------------------
    def show_welcome_if_first_run(self) -> None:
        """On mount: with no model given or configured, the welcome screen (the demo model
        loads underneath)."""
        args = self.args
        if getattr(args, "model", None) or getattr(args, "demo", False) or self.config.model:
            return
        self.push_screen(WelcomeScreen(self, self.config.recommended_model), self._welcome_done)

    def _welcome_done(self, choice: WelcomeChoice | None) -> None:
        if choice is None or choice.kind == "demo" or not choice.spec:
            self.notify("Trying the DEMO model (it writes nonsense). F5 opens the models "
                        "screen to get a real one.", timeout=8)
            return
        self._welcome_choice = choice.spec
        self.load_model_spec(choice.spec)

    # -- after every load ----------------------------------------------------------------
    def after_model_loaded(self, info: ModelInfo) -> None:
        """Called by the app each time a model has loaded: remember it as recently used."""
        spec = model_spec(info)
        try:
            recent.remember_model(spec, info.name)
        except OSError as exc:
            self.notify(f"Could not remember {info.name} as recently used: {exc}",
                        severity="warning")
        chosen = self._welcome_choice
        if chosen is not None and same_model(chosen, info.path, info.name):
            self._welcome_choice = None
            if not self.config.model:
                self._save_config(replace(self.config, model=chosen),
                                  f"{info.name} opens next time (saved in the config)")

    # -- the models screen ---------------------------------------------------------------
    def action_models(self) -> None:
        self.push_screen(ModelsScreen(self), self._models_done)

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        keys = self.keymap.get("models") or next(
            (b.key for b in APP_BINDINGS if b.id == "models"), "")
        yield SystemCommand("Models: switch, download, quantize",
                            f"{HELP_TEXT['models']} ({keys})", self.action_models)

    def _models_done(self, spec: str | None) -> None:
        if spec:
            self.load_model_spec(spec)

    def scan_models(self) -> tuple[list[ModelEntry], list[PartialDownload]]:
        """The models list (any thread: it reads files, never MLX)."""
        from models.catalog import partial_downloads, scan_models

        memory = recent.load()
        # Free memory from the engine's last reading (MLX is asked on its own thread only);
        # before the first reading, the system's free memory.
        reading = self.sidebar.memory.reading
        available = (reading.load_available if reading is not None and reading.load_available
                     else int(psutil.virtual_memory().available))
        entries = scan_models(recent.model_folders(), recent=[r.spec for r in memory.recent],
                              available=available)
        return entries, partial_downloads()

    # -- switching -----------------------------------------------------------------------
    def load_model_spec(self, spec: str) -> None:
        """Load ``spec`` in place of the current model, keeping the conversation."""
        if self._refuse_while_replying("switch the model"):
            return
        self._switch_worker(spec)

    @work(exclusive=True, group="switch", exit_on_error=False, description="switch the model")
    async def _switch_worker(self, spec: str) -> None:
        await self.switch_model(spec)

    async def switch_model(self, spec: str, *, quiet: bool = False) -> bool:
        """Load ``spec`` (the old model is unloaded and its memory returned). The
        conversation is kept: the next message prefills it on the new model. True if it
        loaded; otherwise the reason was shown and whatever the engine still holds stays."""
        self._switching = True
        before = self.model_info.name if self.model_info else None
        self.status.state = f"loading {spec}…"
        self.status.show_progress()
        final = await self._follow(self.engine.load(spec))
        self._switching = False
        if isinstance(final, ModelLoaded):
            self.sidebar.model.record_context(0)  # nothing is cached for the new model yet
            self._model_loaded(final.info)
            if not quiet:
                kept = len(self.messages)
                self.notify(f"{final.info.name} loaded" + (
                    f" in place of {before}" if before else "") + (
                    f"; the conversation ({kept} messages) is kept and will be read again "
                    "with your next message" if kept else ""), timeout=8)
            return True
        message = final.message if isinstance(final, Error) else "the load did not finish"
        self.status.hide_progress()
        still = self.engine.info  # a failure before the old model was dropped keeps it
        self.model_info = still
        if still is not None:
            self.status.state = f"ready · {still.name}"
            self.sidebar.model.record_info(still)
            self.notify(f"{spec} was not loaded: {message} ({still.name} is still loaded)",
                        title="Model", severity="error", timeout=15)
        else:
            self._load_failed(message)
            self.notify(message, title="Model", severity="error", timeout=15)
        self.poll_memory()
        return False

    async def _follow(self, stream: EventStream) -> Any:
        final = None
        async for batch in stream.batches():
            for event in batch:
                if isinstance(event, LoadProgress):
                    self._load_progress(event)
                elif isinstance(event, Notice):
                    self.notify(event.message, title="Model", severity="warning", timeout=12)
            final = batch[-1]
        return final

    # -- jobs: downloads and quantizations -----------------------------------------------
    @property
    def jobs(self) -> dict[str, Job]:
        """The latest job of each kind (download, quantize), running or ended."""
        jobs: dict[str, Job] | None = self.__dict__.get("_model_jobs")
        if jobs is None:
            jobs = self.__dict__["_model_jobs"] = {}
        return jobs

    def job(self, kind: str) -> Job | None:
        return self.jobs.get(kind)

    def cancel_job(self, kind: str) -> None:
        job = self.jobs.get(kind)
        if job is not None and job.running:
            job.cancel.set()

    def _busy(self, kind: str) -> str | None:
        job = self.jobs.get(kind)
        if job is not None and job.running:
            what = "download" if kind == "download" else "quantization"
            return (f"A {what} is running already ({job.target}): wait for it, or cancel it "
                    "(Ctrl+Z in the models screen)")
        return None

    def start_download(self, repo_id: str) -> str | None:
        """Start downloading ``repo_id`` into the Hugging Face cache; None, or why not."""
        repo = repo_id.strip()
        if not repo:
            return "Type a Hugging Face repo id first, for example " + \
                self.config.recommended_model
        if not looks_like_repo_id(repo):
            return (f"{repo!r} is not a Hugging Face repo id: it looks like owner/name, for "
                    f"example {self.config.recommended_model}")
        busy = self._busy("download")
        if busy:
            return busy
        job = Job("download", repo)
        self.jobs["download"] = job
        self._download_worker(job)
        self._watch_jobs()
        return None

    @work(thread=True, exclusive=True, group="download", exit_on_error=False,
          description="download the model")
    def _download_worker(self, job: Job) -> None:
        from engine.memory import fmt_bytes
        from models.hub import fetch_model

        def progress(p: Any) -> None:
            job.latest = p  # the UI's timer reads it (at most 10 times a second)

        try:
            path = fetch_model(job.target, progress=progress, cancel=job.cancel)
        except DownloadCancelled as exc:
            job.finish("cancelled", str(exc))
        except WorkbenchError as exc:
            job.finish("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - the job must end, whatever happened
            job.finish("failed", f"download of {job.target} failed: {type(exc).__name__}: {exc}")
        else:
            total = job.latest.total if job.latest is not None else 0
            size = f" ({fmt_bytes(total)})" if total else ""
            job.finish("done", f"{job.target} downloaded{size}: Enter on it in the models "
                       "screen loads it", path)

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
        target = self._quantize_target(entry, bits)
        stream = self.engine.submit(quantize_job(str(entry.path), str(target), bits, 64))
        job = Job("quantize", str(target), stream.cancel_flag)
        self.jobs["quantize"] = job
        self._quantize_worker(job, stream)
        self._watch_jobs()
        return None

    def _quantize_target(self, entry: ModelEntry, bits: int) -> Path:
        base = recent.model_folders()[0]
        stem = sanitize_name(f"{entry.name.rsplit('/', 1)[-1]}-{bits}bit", default="model")
        target, n = base / stem, 1
        while target.exists():
            n += 1
            target = base / f"{stem}-{n}"
        return target

    @work(group="quantize", exit_on_error=False, description="quantize the model")
    async def _quantize_worker(self, job: Job, stream: EventStream) -> None:
        from models.quantize import QuantizeProgress

        final = None
        try:
            async for batch in stream.batches():
                for event in batch:
                    if isinstance(event, QuantizeProgress):
                        job.latest = event
                final = batch[-1]
        finally:
            if final is None:  # the app is closing
                stream.cancel_flag.set()
        if isinstance(final, Result):
            folder = recent.add_model_folder(final.value)
            job.finish("done", f"{folder.name} written ({folder}): it is in the models list "
                       "now", folder)
        elif isinstance(final, Error):
            job.finish("cancelled" if final.kind == "cancelled" else "failed", final.message)

    def _watch_jobs(self) -> None:
        if self._job_timer is None:
            self._job_timer = self.set_interval(JOB_REPAINT_S, self._tick_jobs)

    def _tick_jobs(self) -> None:
        """Show the jobs in the status line (when no reply or load is using it) and say how
        each one ended."""
        running = [j for j in self.jobs.values() if j.running]
        for kind, job in list(self.jobs.items()):
            if not job.running and not job.announced:
                job.announced = True
                self.notify(job.message, title=kind.capitalize(), timeout=10,
                            severity="information" if job.state == "done" else "warning")
        loading = self._switching or not self._load_finished.is_set()  # the bar is the load's
        if running and not loading and not self.replying:
            job = running[0]
            done, total = job.amounts()
            self.status.state = job.line()
            self.status.show_progress(done, total)
            self._job_in_status = True
        elif not running:
            if self._job_in_status and not loading:
                self.status.hide_progress()
                if not self.replying:
                    self.status.state = (f"ready · {self.model_info.name}" if self.model_info
                                         else "no model loaded")
            self._job_in_status = False
            if self._job_timer is not None:
                self._job_timer.stop()
                self._job_timer = None

    async def on_unmount(self) -> None:
        """At exit (Textual calls every class's handler): stop the jobs that run; a download
        keeps what it fetched, for next time."""
        for job in self.jobs.values():
            job.cancel.set()
