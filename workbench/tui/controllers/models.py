"""The model: the first load, switching mid-conversation, the welcome and models screens.

``ModelController`` owns which model is loaded (``info``) and whether the first load has
ended. Every load runs on the engine thread (``Engine.load``); its progress goes to the
status line, and when it ends ``LoadFinished`` is posted (the adapters are listed again for
the new model). The conversation is kept across a switch: the next message prefills it on
the new model. Every successful load is remembered as recently used. The background jobs
(downloads, quantizations) are the ``JobsController``'s; the screens reach them through
this controller (``JobHost``).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import EngineError, LoadProgress, Notice, follow
from models.resolve import same_location

from ... import recent, runtime
from ..messages import LoadFinished
from .jobs import JobsController

if TYPE_CHECKING:
    from engine import AdapterState, EngineAPI, EventStream, ModelInfo
    from models.catalog import ModelEntry, PartialDownload

    from ...config import Config
    from ..app import WorkbenchApp
    from ..screens.welcome import WelcomeChoice
    from .jobs import Job


def model_spec(info: ModelInfo) -> str:
    """What to give ``Engine.load`` to get this model again: its repo id, else its folder."""
    from models.hub import looks_like_repo_id

    if looks_like_repo_id(info.name) and not Path(info.name).exists():
        return info.name
    return info.path


def names(spec: str, info: ModelInfo) -> bool:
    """Whether ``spec`` (a repo id or folder) names the loaded model ``info``."""
    return spec == info.name or same_location(spec, info.path)


class ModelController:
    def __init__(self, app: WorkbenchApp, engine: EngineAPI, args: argparse.Namespace,
                 config: Config) -> None:
        self.app = app
        self.engine = engine
        self.args = args
        self.config = config
        self.info: ModelInfo | None = None
        self.jobs = JobsController(app, engine, config.recommended_model)
        self._first_load = asyncio.Event()  # set when the first load ends, loaded or not
        self._switching = False
        self._welcome_choice: str | None = None  # chosen on the welcome screen, until loaded

    @property
    def ready(self) -> bool:
        return self.info is not None

    @property
    def switching(self) -> bool:
        """A load asked for after the first one is running."""
        return self._switching

    @property
    def load_finished(self) -> bool:
        """The first load has ended, with a model or with an error."""
        return self._first_load.is_set()

    async def wait_loaded(self) -> None:
        await self._first_load.wait()

    @property
    def model_info(self) -> ModelInfo | None:  # what the models screen asks (JobHost)
        return self.info

    # -- the first load ------------------------------------------------------------------
    def start(self) -> None:
        """On mount: the welcome screen on a first run; after the first frame, the load."""
        args, config = self.args, self.config
        if not (getattr(args, "model", None) or getattr(args, "demo", False) or config.model):
            from ..screens.welcome import WelcomeScreen

            self.app.push_screen(WelcomeScreen(self, config.recommended_model),
                                 self._welcome_done)
        # After the first frame: the engine thread's imports (mlx-lm) would delay it.
        self.app.call_after_refresh(self._start_load)

    def _start_load(self) -> None:
        self.app.run_worker(self._load_first(), group="load", exclusive=True,
                            exit_on_error=False, description="load the model")

    async def _load_first(self) -> None:
        """Pick the model (building the demo kit on the engine thread if needed), load it."""
        args, config = self.args, self.config
        self.app.update_status(load="finding the model…", load_progress=(0, 0))

        def choose(emit: Any, _cancel: Any) -> runtime.ModelChoice:
            return runtime.choose_model(args, config,
                                        lambda msg: emit(LoadProgress("build", msg)))

        try:
            choice = await self._follow(self.engine.run_mlx(choose))
            info = await self._follow(self.engine.load(choice.spec, choice.adapter))
        except EngineError as exc:
            self._failed(str(exc))
        else:
            self._loaded(info)
        finally:
            self._first_load.set()

    async def _follow(self, stream: EventStream[Any]) -> Any:
        return await follow(stream, {LoadProgress: self._progress, Notice: self._notice})

    def _progress(self, event: LoadProgress) -> None:
        busy = (event.done, event.total) if event.stage == "download" and event.total else (0, 0)
        self.app.update_status(load=event.line(), load_progress=busy)
        self.app.sidebar.model.record_info(None, event.message)

    def _notice(self, event: Notice) -> None:
        self.app.notify(event.message, title="Model", severity="warning", timeout=12)

    def _loaded(self, info: ModelInfo) -> None:
        app = self.app
        self.info = info
        app.sub_title = info.name
        app.update_status(load="", load_progress=None, model=info.name, note="")
        app.banner.remove_class("-error")
        app.banner.show(runtime.demo_label(info) if info.is_demo else "")
        app.sidebar.model.record_info(info)
        self._remember(info)
        app.post_message(LoadFinished(info))

    def _failed(self, message: str) -> None:
        app = self.app
        self.info = None
        app.update_status(load="", load_progress=None, model="")
        app.banner.add_class("-error")
        why = message.rstrip(".")
        app.banner.show(f"The model could not be loaded: {why}. No model is loaded: F5 opens "
                        "the models screen to choose one.")
        app.sidebar.model.record_info(None, "not loaded")
        app.post_message(LoadFinished(None, message))

    def _remember(self, info: ModelInfo) -> None:
        spec = model_spec(info)
        try:
            recent.remember_model(spec, info.name)
        except OSError as exc:
            self.app.notify(f"Could not remember {info.name} as recently used: {exc}",
                            severity="warning")
        chosen = self._welcome_choice
        if chosen is not None and names(chosen, info):
            self._welcome_choice = None
            if not self.app.config.model:
                self.app.save_config(replace(self.app.config, model=chosen),
                                     f"{info.name} opens next time (saved in the config)")

    # -- what the engine says ------------------------------------------------------------
    def model_changed(self, info: ModelInfo | None) -> None:
        """The engine's model changed (whoever loaded it): the pane and title follow."""
        if info is None and self.info is None:
            return
        self.info = info
        self.app.sub_title = info.name if info else ""
        self.app.update_status(model=info.name if info else "")
        self.app.sidebar.model.record_info(info, "" if info else "not loaded")

    def adapter_changed(self, state: AdapterState) -> None:
        if self.info is not None:
            self.info = replace(self.info, adapter=state.path)
            self.app.sidebar.model.record_info(self.info)

    # -- the welcome and models screens --------------------------------------------------
    def _welcome_done(self, choice: WelcomeChoice | None) -> None:
        if choice is None or choice.kind == "demo" or not choice.spec:
            self.app.notify("Trying the DEMO model (it knows a few dozen answers; try "
                            "\"Hello\" or its pirate adapter, F4). F5 opens the models screen "
                            "to get a real one.", timeout=8)
            return
        self._welcome_choice = choice.spec
        self.load_spec(choice.spec)

    def open_screen(self) -> None:
        from ..screens.models import ModelsScreen

        self.app.push_screen(ModelsScreen(self), self._models_done)

    def _models_done(self, spec: str | None) -> None:
        if spec:
            self.load_spec(spec)

    def scan_models(self) -> tuple[list[ModelEntry], list[PartialDownload]]:
        """The models list (any thread: it reads files, never MLX)."""
        import psutil

        from models.catalog import partial_downloads, scan_models

        memory = recent.load()
        # Free memory from the engine's last reading (MLX is asked on its own thread only);
        # before the first reading, the system's free memory.
        reading = self.app.sidebar.memory.reading
        available = (reading.load_available if reading is not None and reading.load_available
                     else int(psutil.virtual_memory().available))
        entries = scan_models(recent.model_folders(), recent=[r.spec for r in memory.recent],
                              available=available)
        return entries, partial_downloads()

    # JobHost: the screens start and watch the jobs through here.
    def job(self, kind: str) -> Job | None:
        return self.jobs.job(kind)

    def start_download(self, repo_id: str) -> str | None:
        return self.jobs.start_download(repo_id)

    def start_quantize(self, entry: ModelEntry, bits: int) -> str | None:
        return self.jobs.start_quantize(entry, bits)

    def cancel_job(self, kind: str) -> None:
        self.jobs.cancel_job(kind)

    # -- switching -----------------------------------------------------------------------
    def load_spec(self, spec: str) -> None:
        """Load ``spec`` in place of the current model, keeping the conversation."""
        if self.app.chat.refuse_while_replying("switch the model"):
            return
        self.app.run_worker(self.switch(spec), group="switch", exclusive=True,
                            exit_on_error=False, description="switch the model")

    async def switch(self, spec: str, *, quiet: bool = False) -> bool:
        """Load ``spec`` (the old model is unloaded and its memory returned). True if it
        loaded; otherwise the reason was shown and whatever the engine still holds stays."""
        self._switching = True
        before = self.info.name if self.info else None
        self.app.update_status(load=f"loading {spec}…", load_progress=(0, 0))
        try:
            info = await self._follow(self.engine.load(spec))
        except EngineError as exc:
            message = str(exc)
        else:
            self.app.sidebar.model.record_context(0)  # nothing is cached for it yet
            self._loaded(info)
            if not quiet:
                kept = len(self.app.chat.conversation.messages)
                self.app.notify(f"{info.name} loaded" + (
                    f" in place of {before}" if before else "") + (
                    f"; the conversation ({kept} messages) is kept and will be read again "
                    "with your next message" if kept else ""), timeout=8)
            return True
        finally:
            self._switching = False
        still = self.engine.info  # a failure before the old model was dropped keeps it
        if still is not None:
            self.info = still
            self.app.update_status(load="", load_progress=None, model=still.name)
            self.app.sidebar.model.record_info(still)
            self.app.notify(f"{spec} was not loaded: {message} ({still.name} is still "
                            "loaded)", title="Model", severity="error", timeout=15)
            self.app.post_message(LoadFinished(still, message))
        else:
            self._failed(message)
            self.app.notify(message, title="Model", severity="error", timeout=15)
        return False
