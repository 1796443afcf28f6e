"""What the feature mixins (sessions, models) may use of ``WorkbenchApp``, for the type checker.

The mixins hold their own actions and workers and are mixed into ``WorkbenchApp``; at run
time ``AppHost`` is ``object``. When type checking, it is an ``App`` that declares the parts
of ``WorkbenchApp`` the mixins rely on, so that a rename in ``app.py`` fails ``mypy`` here
rather than at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    import asyncio

    from textual.app import App

    from engine import Engine, LoadProgress, ModelInfo, SamplingParams

    from .config import Config
    from .widgets import ChatView, PromptBox, Sidebar, StatusLine

    class AppHost(App[int]):
        args: argparse.Namespace
        config: Config
        params: SamplingParams
        system_prompt: str
        messages: list[dict[str, str]]
        model_info: ModelInfo | None
        replying: bool
        meters_frozen: bool
        engine: Engine
        keymap: dict[str, str]
        _load_finished: asyncio.Event

        @property
        def chat(self) -> ChatView: ...

        @property
        def prompt(self) -> PromptBox: ...

        @property
        def sidebar(self) -> Sidebar: ...

        @property
        def status(self) -> StatusLine: ...

        @property
        def model_ready(self) -> bool: ...

        def poll_memory(self) -> None: ...

        def _model_loaded(self, info: ModelInfo) -> None: ...

        def _load_failed(self, message: str) -> None: ...

        def _load_progress(self, event: LoadProgress) -> None: ...

        def _refuse_while_replying(self, what: str) -> bool: ...

        def _save_config(self, config: Config, done: str) -> None: ...

        async def action_new_chat(self) -> None: ...

        # Each mixin's entry points the other one calls.
        async def switch_model(self, spec: str, *, quiet: bool = False) -> bool: ...

        def session_label(self) -> str: ...
else:
    AppHost = object
