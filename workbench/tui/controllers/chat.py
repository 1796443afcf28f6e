"""The chat: send, regenerate, edit, stop, copy, start over; branches and token views.

``ChatController`` owns whether a reply is being written and the one ``Conversation`` of
the app (``workbench/conversation.py``: what the chat shows, what the engine is sent and
what a session saves are that one object). A reply is asked of the engine once the model
has loaded and streamed into its turn by the paced streamer; when it is in the
conversation the controller posts ``TurnFinished`` (the sessions controller saves, the
adapters controller tags the turn), and ``ConversationCleared`` on a new chat.

Seeing inside (issue 13; thinking, token views and branches are ``controllers/inside.py``):
with the probability view on (``token_mode``) replies are asked for with logprobs and shown
token by token; the tokens of each reply are kept here, by message, so that the chat drawn
again from the conversation (``render``: a session opened, another branch) shows them.
Regenerating and editing fork the conversation (the old branch stays as a sibling); a fork
whose turn fails shows the branch it was to replace again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from engine import (
    EngineError,
    Memory,
    Notice,
    PrefillProgress,
    TokenLogprob,
    TokenText,
    TurnDone,
    TurnStats,
)

from ...conversation import Conversation
from ..messages import ConversationCleared, TurnFinished
from ..streamer import PacedStreamer
from ..widgets.tokens import LOGPROBS_K, OFF
from .inside import InsideController

NO_MODEL = "No model is loaded: F5 opens the models screen to choose one."

if TYPE_CHECKING:
    from engine import EngineAPI
    from sessions import Session, SessionMessage

    from ..app import WorkbenchApp
    from ..widgets import AssistantTurn, UserTurn
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
        self.token_mode = OFF  # the probability view: off | probability | entropy
        # Each reply's tokens (asked for while the view was on), by message: id -> (the
        # message, kept so that its id stays its own, and the tokens).
        self._tokens: dict[int, tuple[SessionMessage, list[TokenLogprob]]] = {}
        self.inside = InsideController(app, self)  # thinking, token views, branches

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
        turn = await app.chat_view.add_user(text)
        turn.index = len(self.conversation.messages) - 1
        turn.set_branch(*self.conversation.siblings(turn.index))  # an edit: a new branch
        await self._start_reply()

    async def _start_reply(self, prefix: list[TokenLogprob] | None = None) -> None:
        """Mount the reply's turn and ask for it; ``prefix``: the tokens it must begin with
        (continue from a chosen token), already known with their probabilities."""
        info = self.models.info
        turn = await self.app.chat_view.add_assistant(info.name if info else "assistant")
        turn.index = len(self.conversation.messages)
        turn.set_token_mode(self.token_mode)
        for token in prefix or ():
            turn.record_token(token)
        if info is not None:
            turn.note("reading the prompt…")
        elif self.models.load_finished and not self.models.switching:
            turn.note(NO_MODEL)
        else:
            turn.note("waiting for the model to finish loading…")
        self._streaming = True
        self._stop_requested = False
        self.app.update_status(reply="reading the prompt…" if info else "", note="")
        forced = tuple(t.token for t in prefix or ())
        self.app.run_worker(self._reply(turn, forced), group="reply", exclusive=True,
                            exit_on_error=False, description="stream the reply")

    async def _reply(self, turn: AssistantTurn, forced: tuple[int, ...] = ()) -> None:
        """Send the conversation (once the model has loaded) and stream the reply."""
        await self.models.wait_loaded()
        if self._stop_requested or (self.models.info is None and not self.models.switching):
            # Nothing to send it to (the load failed): say so, not what the engine would.
            await self._finish(turn, None, "" if self._stop_requested else NO_MODEL)
            return
        app, sidebar = self.app, self.app.sidebar
        # Logprobs only while the view is on: off, the engine computes nothing extra.
        options = replace(self.conversation.turn_options(
            logprobs=LOGPROBS_K if self.token_mode != OFF else 0),
            ignore_eos=self.ignore_eos, reply_prefix=forced)
        stream = self.engine.chat(self.conversation.engine_messages(), self.conversation.params,
                                  options=options)
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
                throughput.record_tokens(token.generated, token.decode_tps,
                                         token.from_draft)
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
            message = self.conversation.add_reply(result)
            if turn.tokens:
                self._tokens[id(message)] = (message, turn.tokens)
            self.label_branches()
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
        # The message goes back to the prompt box; a fork that got nothing shows the branch
        # it was to replace again (a failed regenerate gives nothing back).
        text = self.conversation.drop_unanswered()
        await self.render()
        self.give_back(text)
        app.update_status(reply="", note=f"{why} Your message is back in the prompt box."
                          if text else why)

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
        elif self._editing():
            self.app.call_later(self._abandon_edit)

    def _editing(self) -> bool:
        """A message was taken back to be edited (a fork waits for it at the end)."""
        parked = self.conversation.session.parked
        return parked is not None and parked.position == len(self.conversation.messages)

    async def _abandon_edit(self) -> None:
        """Esc while editing: the branch shown before comes back (the text stays in the
        prompt box, to send as a new message or not)."""
        if self._editing() and not self.replying:
            self.conversation.unfork()
            await self.render()
            self.app.update_status(note="edit abandoned: the conversation is as it was")

    async def regenerate(self) -> None:
        if self.refuse_while_replying("regenerate"):
            return
        if self.conversation.pop_reply() is None:  # the old reply stays as a sibling
            self.app.notify("There is no reply to regenerate yet.", severity="warning")
            return
        await self.app.chat_view.remove_turns(1)
        await self._start_reply()

    async def edit_last(self) -> None:
        if self.refuse_while_replying("edit the last message"):
            return
        text = self.conversation.take_last_exchange()  # kept as a sibling branch
        if text is None:
            self.app.notify("There is no message to edit yet.", severity="warning")
            return
        await self.app.chat_view.remove_turns(2)
        self.give_back(text)
        self.app.update_status(note="editing your last message: Enter sends it as a new "
                               "branch (the old one is kept)")

    def copy_last(self) -> None:
        reply = self.conversation.last("assistant")
        if reply is None:
            self.app.notify("There is no reply to copy yet.", severity="warning")
            return
        from engine.reasoning import ends_a_block, split_reasoning

        answer = split_reasoning(reply.content, inside=ends_a_block(reply.content))[1]
        text = answer or reply.content  # the answer, if it thought
        self.app.copy_to_clipboard(text)
        self.app.notify(f"Copied the last reply ({len(text)} characters).")

    async def new_chat(self) -> bool:
        """Start an empty conversation (the old one stays saved as it was)."""
        if self.refuse_while_replying("start a new conversation"):
            return False
        old = self.conversation.start_over()
        self._tokens.clear()
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
        self.conversation.replace_session(session)
        self._tokens.clear()
        await self.render()

    async def render(self) -> None:
        """Draw the chat again from the conversation (a session opened, another branch)."""
        from ..labels import turn_adapter_label

        session = self.conversation.session
        view = self.app.chat_view
        await view.clear()
        title = short_model(session.model) or "assistant"
        tagged = any(m.adapter for m in session.messages) or bool(session.adapter)
        context = 0
        turn: UserTurn | AssistantTurn
        for index, message in enumerate(session.messages):
            if message.role == "user":
                turn = await view.add_user(message.content)
                turn.index = index
                continue
            if not message.content:
                continue
            turn = await view.add_assistant(title)
            turn.index = index
            stats = stats_from(message.stats)
            await turn.show_text(message.content, stats)
            turn.done = True
            kept = self._tokens.get(id(message))
            if kept is not None and kept[0] is message:
                for token in kept[1]:
                    turn.record_token(token)
            turn.set_token_mode(self.token_mode)
            if stats is None:
                turn.note("from the saved session")
                continue
            context = stats.context_tokens or context
            if tagged or self.app.adapters.labels_reply(stats):  # as when it was written
                turn.border_subtitle = turn_adapter_label(stats)
        self.label_branches()
        self.app.sidebar.model.record_context(context)

    def label_branches(self) -> None:
        """``‹k/n›`` on every turn that has sibling branches."""
        for turn in self.app.chat_view.turns():
            if turn.index >= 0:
                turn.set_branch(*self.conversation.siblings(turn.index))

    async def keep_reply(self, done: TurnDone) -> AssistantTurn | None:
        """Put ``done`` (kept from a comparison) in place of the last reply; returns the
        turn that shows it (the adapters controller says ``TurnFinished`` once the kept
        reply's adapter is active again, so that the save records it)."""
        from ..labels import turn_adapter_label

        self.conversation.replace_last_reply(done)  # the reply it replaces: a sibling
        turn = self.app.chat_view.last_assistant()
        if turn is not None:
            await turn.show_text(done.text, done.stats)
            turn.border_subtitle = turn_adapter_label(done.stats)
            self.label_branches()
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
