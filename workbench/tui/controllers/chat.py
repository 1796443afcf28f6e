"""The chat: send, regenerate, edit the last message, stop, copy, start over.

``ChatController`` owns whether a reply is being written and the one ``Conversation`` of
the app (``workbench/conversation.py``: what the chat shows, what the engine is sent and
what a session saves are that one object). A reply is asked of the engine once the model
has loaded and streamed into its turn by the paced streamer; when it is in the
conversation the controller posts ``TurnFinished`` (the sessions controller saves, the
adapters controller tags the turn), and ``ConversationCleared`` on a new chat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine import EngineError, Memory, Notice, PrefillProgress, TokenText, TurnDone, TurnStats

from ...conversation import Conversation
from ..messages import ConversationCleared, TurnFinished
from ..streamer import PacedStreamer

NO_MODEL = "No model is loaded: F5 opens the models screen to choose one."

if TYPE_CHECKING:
    from engine import EngineAPI
    from sessions import Session

    from ..app import WorkbenchApp
    from ..widgets import AssistantTurn
    from .models import ModelController


class ChatController:
    def __init__(self, app: WorkbenchApp, engine: EngineAPI, conversation: Conversation,
                 models: ModelController) -> None:
        self.app = app
        self.engine = engine
        self.conversation = conversation
        self.models = models
        self.streamer = PacedStreamer()
        self.ignore_eos = False  # benchmarks: keep a reply going to max_tokens
        self.meters_frozen = False  # screenshots: meters keep what they show
        self._streaming = False
        self._held = ""  # another view (compare) is using the engine for replies
        self._stop_requested = False

    @property
    def replying(self) -> bool:
        """A reply is being written (here or, held, in compare): the other actions wait."""
        return self._streaming or bool(self._held)

    def refuse_while_replying(self, what: str) -> bool:
        if self.replying:
            self.app.notify(f"Stop the reply first (Esc) to {what}.", severity="warning")
        return self.replying

    def hold(self, who: str) -> None:
        """Let another view write replies (compare): the chat's actions wait meanwhile."""
        self._held = who

    @property
    def held(self) -> bool:
        return bool(self._held)

    def release(self) -> None:
        self._held = ""

    # -- sending -------------------------------------------------------------------------
    async def send(self, text: str) -> None:
        app = self.app
        if self.replying:
            app.notify("A reply is still being written: press Esc to stop it first.",
                       severity="warning")
            return
        app.prompt.remember(text)
        app.prompt.clear()
        self.conversation.add_user(text)
        await app.chat_view.add_user(text)
        await self._start_reply()

    async def _start_reply(self) -> None:
        info = self.models.info
        turn = await self.app.chat_view.add_assistant(info.name if info else "assistant")
        if info is not None:
            turn.note("reading the prompt…")
        elif self.models.load_finished and not self.models.switching:
            turn.note(NO_MODEL)
        else:
            turn.note("waiting for the model to finish loading…")
        self._streaming = True
        self._stop_requested = False
        self.app.update_status(reply="reading the prompt…" if info else "", note="")
        self.app.run_worker(self._reply(turn), group="reply", exclusive=True,
                            exit_on_error=False, description="stream the reply")

    async def _reply(self, turn: AssistantTurn) -> None:
        """Send the conversation (once the model has loaded) and stream the reply."""
        await self.models.wait_loaded()
        if self._stop_requested or (self.models.info is None and not self.models.switching):
            # Nothing to send it to (the load failed): say so, not what the engine would.
            await self._finish(turn, None, "" if self._stop_requested else NO_MODEL)
            return
        app, sidebar = self.app, self.app.sidebar
        stream = self.engine.chat(self.conversation.engine_messages(), self.conversation.params,
                                  ignore_eos=self.ignore_eos)
        throughput = sidebar.throughput
        throughput.record_start()

        def prefill(event: PrefillProgress) -> None:
            throughput.record_prefill(event.done, event.total)
            if not turn.text:
                turn.note(f"reading the prompt: {event.done}/{event.total} tokens")
                app.update_status(reply="reading the prompt…")

        def memory(event: Memory) -> None:
            if not self.meters_frozen:
                sidebar.memory.record(event.reading)

        def frame(token: TokenText | None) -> None:
            if token is not None:
                if throughput.generated == 0:  # the first text of the reply
                    turn.note("")
                    app.update_status(reply="writing…")
                throughput.record_tokens(token.generated, token.decode_tps)
            sidebar.tick()

        sidebar.paced = True
        app.prompt.cursor_blink = False  # no blinking frames while the model writes
        result: TurnDone | EngineError | None = None
        try:
            result = await self.streamer.run(stream, turn, on_frame=frame, handlers={
                PrefillProgress: prefill, Memory: memory,
                Notice: lambda e: app.notify(e.message, severity="warning", timeout=8)})
        except EngineError as exc:
            result = exc
        finally:
            sidebar.paced = False
            app.prompt.cursor_blink = True
        await self._finish(turn, result)

    async def _finish(self, turn: AssistantTurn, result: TurnDone | EngineError | None,
                      why: str = "") -> None:
        app = self.app
        self._streaming = False
        app.sidebar.throughput.streaming = False
        if isinstance(result, TurnDone) and (result.text or result.stats.generated_tokens):
            self.conversation.add_reply(result)
            app.sidebar.throughput.record_done(result.stats)
            app.sidebar.model.record_context(result.stats.context_tokens)
            await turn.finish(result.stats)
            app.update_status(reply="", note="")
            app.post_message(TurnFinished(result, turn))
            return
        # Nothing came back: take the message out of the conversation, give its text back.
        if isinstance(result, EngineError):
            why = f"Not sent: {result}"
            app.notify(str(result), title="Not sent", severity="error", timeout=12)
        elif why:
            app.notify(why, title="Not sent", severity="warning", timeout=10)
        else:
            why = "Stopped before the reply began."
        await turn.finish(error=why)
        text = self.conversation.drop_unanswered()
        await app.chat_view.remove_turns(2)
        self.give_back(text)
        app.update_status(reply="", note=f"{why} Your message is back in the prompt box.")

    def give_back(self, text: str) -> None:
        """Put ``text`` in the prompt box without losing what is already typed there."""
        prompt = self.app.prompt
        if not text:
            return
        if prompt.text.strip():
            prompt.remember(prompt.text)
        prompt.set_text(text)
        prompt.focus()

    # -- the other actions ---------------------------------------------------------------
    def cancel(self) -> None:
        if self._streaming:
            self._stop_requested = True
            self.engine.cancel()
            self.app.update_status(reply="stopping…")

    async def regenerate(self) -> None:
        if self.refuse_while_replying("regenerate"):
            return
        if self.conversation.pop_reply() is None:
            self.app.notify("There is no reply to regenerate yet.", severity="warning")
            return
        await self.app.chat_view.remove_turns(1)
        await self._start_reply()

    async def edit_last(self) -> None:
        if self.refuse_while_replying("edit the last message"):
            return
        text = self.conversation.take_last_exchange()
        if text is None:
            self.app.notify("There is no message to edit yet.", severity="warning")
            return
        await self.app.chat_view.remove_turns(2)
        self.give_back(text)
        self.app.update_status(note="editing your last message: Enter sends it again")

    def copy_last(self) -> None:
        reply = self.conversation.last("assistant")
        if reply is None:
            self.app.notify("There is no reply to copy yet.", severity="warning")
            return
        self.app.copy_to_clipboard(reply.content)
        self.app.notify(f"Copied the last reply ({len(reply.content)} characters).")

    async def new_chat(self) -> bool:
        """Start an empty conversation (the old one stays saved as it was)."""
        if self.refuse_while_replying("start a new conversation"):
            return False
        old = self.conversation.start_over()
        await self.app.chat_view.clear()
        self.engine.reset()
        self.app.sidebar.model.record_context(0)
        self.app.prompt.focus()
        self.app.update_status(note="new conversation")
        self.app.post_message(ConversationCleared(old))
        return True

    # -- whole conversations -------------------------------------------------------------
    async def show(self, session: Session) -> None:
        """Hold ``session`` as the conversation and put it on screen."""
        from ..labels import turn_adapter_label

        self.conversation.replace_session(session)
        view = self.app.chat_view
        await view.clear()
        title = short_model(session.model) or "assistant"
        tagged = any(m.adapter for m in session.messages) or bool(session.adapter)
        context = 0
        for message in session.messages:
            if message.role == "user":
                await view.add_user(message.content)
                continue
            if not message.content:
                continue
            turn = await view.add_assistant(title)
            await turn.show_text(message.content)
            turn.done = True
            stats = stats_from(message.stats)
            if stats is None:
                turn.note("from the saved session")
                continue
            turn.show_stats(stats)
            context = stats.context_tokens or context
            if tagged or stats.adapter:  # replies keep the adapter that wrote them
                turn.border_subtitle = turn_adapter_label(stats)
        self.app.sidebar.model.record_context(context)

    async def keep_reply(self, done: TurnDone) -> AssistantTurn | None:
        """Put ``done`` (kept from a comparison) in place of the last reply; returns the
        turn that shows it (the adapters controller says ``TurnFinished`` once the kept
        reply's adapter is active again, so that the save records it)."""
        from ..labels import turn_adapter_label

        self.conversation.replace_last_reply(done)
        turn = self.app.chat_view.last_assistant()
        if turn is not None:
            await turn.show_text(done.text)
            turn.show_stats(done.stats)
            turn.border_subtitle = turn_adapter_label(done.stats)
        self.app.sidebar.model.record_context(done.stats.context_tokens)
        return turn


def stats_from(saved: dict[str, object]) -> TurnStats | None:
    """The TurnStats a saved message carries, or None if they are incomplete."""
    from dataclasses import fields

    names = {f.name for f in fields(TurnStats)}
    try:
        return TurnStats(**{k: v for k, v in saved.items() if k in names})  # type: ignore[arg-type]
    except TypeError:
        return None


def short_model(spec: str) -> str:
    """How a session's model is named on a restored turn: the repo id or the folder name."""
    from pathlib import Path

    if not spec:
        return ""
    return spec if not spec.startswith(("/", "~", ".")) else Path(spec).name
