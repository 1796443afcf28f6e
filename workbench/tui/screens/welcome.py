"""The first-run screen: how to get a model, shown while the demo model loads underneath.

Shown when no model is configured or given. It offers the four ways to start: download the
recommended model (named in the config), open a local model folder, pick a model already in
the Hugging Face cache, or try the demo model. Whether the Hub can be reached is asked in a
thread (``models.hub.hub_status``: one connection attempt, no MLX); offline, the screen
says so at once and offers the other three. A download runs as the app's job (its progress
shows here); when it is done the screen dismisses with the model to load.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from common.errors import WorkbenchError
from common.formats import gb
from models.hub import offline

from .models import FIT_WORDS, JOB_REPAINT_S, Job, JobHost, JobPanel

INTRO = ("No model is set up yet. The DEMO model (a tiny model trained on a few dozen answers, "
         "with a pirate and a brief adapter) is loading behind this window so that you can try "
         "the app at once. To chat for real, get a model:")


@dataclass(frozen=True)
class WelcomeChoice:
    """What the user chose: ``kind`` is download, folder, cached or demo; ``spec`` is what
    to load (a repo id or a folder; "" for the demo)."""

    kind: str
    spec: str = ""


class WelcomeScreen(ModalScreen[WelcomeChoice]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "try_demo", "Try the demo model", id="welcome-demo"),
    ]
    CSS_PATH: ClassVar[str] = "screens.tcss"

    def __init__(self, host: JobHost, recommended: str) -> None:
        super().__init__()
        self.host = host
        self.recommended = recommended
        self.online: bool | None = None  # None until the check answers
        self.cached: list[str] = []  # specs of the listed cached models
        self._mine: Job | None = None  # the download started here

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="welcome-dialog", classes="dialog"):
            yield Label("Welcome to MLX Workbench", classes="dialog-title")
            yield Static(INTRO, classes="dialog-intro", markup=False)
            yield Static("Checking the network…", id="welcome-network", markup=False)
            with Vertical(id="welcome-download-section"):
                yield Label("Download the recommended model", classes="section")
                with Horizontal(classes="welcome-row"):
                    yield Button(f"Download {self.recommended}", id="welcome-download",
                                 variant="primary", compact=True, disabled=True)
                yield JobPanel("download", id="welcome-job")
            yield Label("Open a local model folder", classes="section")
            with Horizontal(classes="welcome-row"):
                yield Input(placeholder="a folder with config.json and *.safetensors",
                            id="welcome-folder", compact=True)
                yield Button("Open", id="welcome-open", compact=True)
            yield Static("", id="welcome-folder-error", markup=False)
            yield Label("Models already in the Hugging Face cache", classes="section")
            yield Static("looking…", id="welcome-cached-none", markup=False)
            yield OptionList(id="welcome-cached", compact=True)
            yield Label("Or", classes="section")
            with Horizontal(classes="welcome-row"):
                yield Button("Try the demo model", id="welcome-demo", compact=True)
            yield Static("Esc tries the demo model · later, F5 opens the models screen",
                         classes="dialog-hint", markup=False)

    def on_mount(self) -> None:
        self.query_one("#welcome-cached", OptionList).display = False
        self.query_one("#welcome-folder", Input).focus()
        if offline():  # known at once: no need to wait for a connection attempt
            self._show_network(False, "offline: HF_HUB_OFFLINE is set, so nothing can be "
                               "downloaded")
        else:
            self.check_network()
        self.find_cached()
        self.set_interval(JOB_REPAINT_S, self._tick)

    # -- the network ---------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="welcome-network", exit_on_error=False,
          description="check the network")
    def check_network(self) -> None:
        from models.hub import hub_status

        problem = hub_status()
        self.app.call_from_thread(self._show_network, problem is None, problem or "")

    def _show_network(self, online: bool, problem: str) -> None:
        if not self.is_attached:  # dismissed before the check answered
            return
        self.online = online
        line = self.query_one("#welcome-network", Static)
        if online:
            line.update("Online: the Hugging Face Hub can be reached.")
        else:
            line.update(f"{problem[0].upper()}{problem[1:]}. You can still open a local "
                        "folder, pick a cached model or try the demo model.")
        line.set_class(not online, "-offline")
        self.query_one("#welcome-download-section").display = online
        self.query_one("#welcome-download", Button).disabled = not online

    # -- the cache -----------------------------------------------------------------------
    @work(exclusive=True, group="welcome-cache", exit_on_error=False,
          description="look for cached models")
    async def find_cached(self) -> None:
        entries, _partials = await asyncio.to_thread(self.host.scan_models)
        cached = [e for e in entries if e.source == "hf-cache"]
        options = self.query_one("#welcome-cached", OptionList)
        options.clear_options()
        self.cached = []
        for entry in cached:
            fits = FIT_WORDS.get(entry.fit, entry.fit)
            options.add_option(Option(f"{entry.name}  ·  {entry.params_label}  ·  "
                                      f"{entry.bits_per_weight:.1f} bits  ·  "
                                      f"{gb(entry.size_on_disk)}  ·  fits: {fits}"))
            self.cached.append(entry.spec)
        options.display = bool(cached)
        none = self.query_one("#welcome-cached-none", Static)
        none.update("" if cached else "None yet.")
        none.display = not cached

    @on(OptionList.OptionSelected, "#welcome-cached")
    def _cached_chosen(self, event: OptionList.OptionSelected) -> None:
        if 0 <= event.option_index < len(self.cached):
            self.dismiss(WelcomeChoice("cached", self.cached[event.option_index]))

    # -- a folder ------------------------------------------------------------------------
    @on(Button.Pressed, "#welcome-open")
    @on(Input.Submitted, "#welcome-folder")
    def _open_folder(self) -> None:
        from models.resolve import check_model_folder

        text = self.query_one("#welcome-folder", Input).value.strip()
        error = self.query_one("#welcome-folder-error", Static)
        if not text:
            error.update("Type the path of a model folder first.")
            return
        path = Path(text).expanduser()
        try:
            check_model_folder(path)
        except WorkbenchError as exc:
            error.update(str(exc))
            return
        self.dismiss(WelcomeChoice("folder", str(path.resolve())))

    # -- the download --------------------------------------------------------------------
    @on(Button.Pressed, "#welcome-download")
    def _download(self) -> None:
        problem = self.host.start_download(self.recommended)
        if problem:
            self.notify(problem, severity="warning")
        else:
            self._mine = self.host.job("download")

    def _tick(self) -> None:
        job = self.host.job("download")
        mine = job is not None and job.target == self.recommended
        self.query_one("#welcome-job", JobPanel).show(job if mine else None)
        if not mine or job is None:
            return
        self.query_one("#welcome-download", Button).disabled = job.running
        if job is self._mine and job.state == "done":
            self._mine = None
            self.dismiss(WelcomeChoice("download", self.recommended))

    @on(JobPanel.CancelPressed)
    def _cancel(self, event: JobPanel.CancelPressed) -> None:
        self.host.cancel_job(event.kind)

    # -- the demo ------------------------------------------------------------------------
    @on(Button.Pressed, "#welcome-demo")
    def action_try_demo(self) -> None:
        self.dismiss(WelcomeChoice("demo"))

