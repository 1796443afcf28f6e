"""The one conversation model of the workbench, shared by the app and line mode.

A ``Conversation`` wraps a ``sessions.Session``: the transcript (messages, with each reply's
statistics and the adapter that wrote it), the system prompt, the sampling settings, the
model and adapter it runs with. Every face changes the conversation only through these
methods, so what the user sees, what the engine is sent and what a save writes are one
and the same object. It knows nothing of screens, terminals or MLX.
"""

from __future__ import annotations

from engine import AdapterState, SamplingParams, TurnDone
from sessions import Session, SessionMessage


class Conversation:
    def __init__(self, session: Session | None = None, *, system_prompt: str = "",
                 params: SamplingParams | None = None) -> None:
        self.session = session or Session(name="unsaved", system_prompt=system_prompt,
                                          sampling=params or SamplingParams())

    def replace_session(self, session: Session) -> Session:
        """Hold ``session`` from now on (a saved session opened); returns the one held before."""
        old, self.session = self.session, session
        return old

    def start_over(self) -> Session:
        """A new, empty conversation with the same system prompt and sampling (New chat);
        returns the session held before."""
        return self.replace_session(Session(name="unsaved", system_prompt=self.system_prompt,
                                            sampling=self.params))

    # -- settings ------------------------------------------------------------------------
    @property
    def system_prompt(self) -> str:
        return self.session.system_prompt

    @system_prompt.setter
    def system_prompt(self, text: str) -> None:
        self.session.system_prompt = text

    @property
    def params(self) -> SamplingParams:
        return self.session.sampling

    @params.setter
    def params(self, params: SamplingParams) -> None:
        self.session.sampling = params

    def set_model(self, spec: str) -> None:
        """The model the conversation runs on (a repo id or a folder, as given to load)."""
        if self.session.model != spec:
            self.session.model, self.session.model_fingerprint = spec, ""

    def set_adapter(self, state: AdapterState | None) -> None:
        """Record the active adapter and its scale (a scale of 0 stays 0)."""
        if state is None or state.info is None:
            self.session.adapter, self.session.adapter_scale = "", 1.0
            return
        self.session.adapter = str(state.path or "")
        self.session.adapter_scale = 1.0 if state.scale is None else float(state.scale)

    # -- messages ------------------------------------------------------------------------
    @property
    def messages(self) -> list[SessionMessage]:
        return self.session.messages

    @property
    def turns(self) -> int:
        return self.session.turns

    def engine_messages(self) -> list[dict[str, str]]:
        """What ``Engine.chat`` is given: the system prompt, then every message."""
        return self.session.chat_messages()

    def add_user(self, text: str) -> None:
        self.session.add_user(text)

    def add_reply(self, done: TurnDone) -> SessionMessage:
        """Record a finished (or stopped) reply with its statistics and adapter."""
        stats = done.stats
        return self.session.add_reply(done.text, stats.to_dict(),
                                      adapter=stats.adapter_identity,
                                      cancelled=stats.finish_reason == "cancelled")

    def last(self, role: str) -> SessionMessage | None:
        for message in reversed(self.messages):
            if message.role == role:
                return message
        return None

    def ends_with_reply(self) -> bool:
        return bool(self.messages) and self.messages[-1].role == "assistant"

    def drop_unanswered(self) -> str:
        """Take back a user message that got no reply (the turn failed or was stopped before
        its first token); returns its text, to give it back to the user."""
        if self.messages and self.messages[-1].role == "user":
            return self.messages.pop().content
        return ""

    def pop_reply(self) -> SessionMessage | None:
        """Remove the last reply (to regenerate it)."""
        return self.messages.pop() if self.ends_with_reply() else None

    def take_last_exchange(self) -> str | None:
        """Remove the last reply and the message it answered (to edit and resend it);
        returns that message's text, or None when there is no such exchange."""
        if len(self.messages) < 2 or not self.ends_with_reply() \
                or self.messages[-2].role != "user":
            return None
        self.messages.pop()
        return self.messages.pop().content

    def replace_last_reply(self, done: TurnDone) -> None:
        """Put ``done`` in place of the last reply (a reply kept from a comparison)."""
        self.pop_reply()
        self.add_reply(done)

    def clear(self) -> None:
        self.messages.clear()
