"""Evaluating adapters from the app: the Eval screen, with the chat held meanwhile.

``EvalController`` opens the Eval screen (``screens/evaluate.py``) on the adapters the app
knows. The evaluation itself runs on the engine thread (``jobs.evaluate``), not in a
child process: it swaps adapters on the engine and puts the active one back after, so the
chat waits while the screen is open, and the Adapters pane shows the active adapter again
when it closes. The evaluating function is a parameter (``evaluate``), so the tests run the
screen on a scripted one. Its own module because an evaluation is neither a child job nor
part of a training run (``training.py`` opens it, with the last run's data as prompts).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..app import WorkbenchApp


class EvalController:
    def __init__(self, app: WorkbenchApp, *, evaluate: Callable[..., Any] | None = None
                 ) -> None:
        self.app = app
        self.evaluate = evaluate  # None: jobs.evaluate.evaluate_on_engine

    def open_eval(self, prompts: str = "") -> None:
        """The Eval screen, on the adapters the app knows (the chat waits meanwhile: the
        evaluation swaps adapters on the engine, and puts the active one back after), its
        prompts ``prompts`` to begin with (a prompt file or a data folder; "" for none)."""
        from ..screens.evaluate import AdapterOption, EvalScreen

        app = self.app
        if app.chat.refuse_while_replying("evaluate"):
            return
        if not app.models.ready or app.models.info is None:
            app.notify("The model has not loaded yet: evaluate once it has.",
                       severity="warning")
            return
        options = [AdapterOption(i.name, i.path) for i in app.adapters.infos if i.valid]
        params = app.chat.conversation.params.with_values(temperature=0.0)
        app.chat.hold("eval")
        app.push_screen(EvalScreen(app.engine, options, params, model=app.models.info.name,
                                   prompts=prompts, evaluate=self.evaluate),
                        self._eval_closed)

    def _eval_closed(self, _result: object) -> None:
        self.app.chat.release()
        self.app.adapters.pane.record_active(self.app.engine.adapter)
