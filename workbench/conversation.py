"""The one conversation model of the workbench, shared by the app and line mode.

A ``Conversation`` wraps a ``sessions.Session``: the transcript (messages, with each reply's
statistics and the adapter that wrote it), the system prompt, the sampling settings, the
model and adapter it runs with. Every face changes the conversation only through these
methods, so what the user sees, what the engine is sent and what a save writes are one
and the same object. It knows nothing of screens, terminals or MLX.
"""

from __future__ import annotations

from engine import AdapterState, SamplingParams, TurnDone, TurnOptions
from sessions import Session, SessionMessage, branches


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
                                            sampling=self.params,
                                            template_args=dict(self.template_args)))

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

    @property
    def template_args(self) -> dict[str, bool | int | float | str]:
        """Chat-template arguments (e.g. ``enable_thinking``), kept in the session."""
        return self.session.template_args

    def set_thinking(self, on: bool | None) -> None:
        """The template's ``enable_thinking`` switch (None: the template's default)."""
        if on is None:
            self.session.template_args.pop("enable_thinking", None)
        else:
            self.session.template_args["enable_thinking"] = bool(on)

    def turn_options(self, logprobs: int = 0) -> TurnOptions:
        """How the next turn runs: this conversation's template arguments, and logprobs."""
        return TurnOptions(logprobs=logprobs, template_args=dict(self.template_args))

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
        its first token); returns its text, to give it back to the user. A fork that got
        nothing shows the branch it replaced again (a failed regenerate: the reply it was
        to replace comes back, and nothing is given back)."""
        parked = self.session.parked
        if parked is not None and parked.position == len(self.messages):
            self.session.unfork()
            return ""
        if self.messages and self.messages[-1].role == "user":
            return self.session.pop().content
        return ""

    def pop_reply(self) -> SessionMessage | None:
        """Take the last reply off the branch shown, to regenerate it: it stays, as a
        sibling of the reply to come."""
        if not self.ends_with_reply():
            return None
        reply = self.messages[-1]
        self.fork(len(self.messages) - 1)
        return reply

    def take_last_exchange(self) -> str | None:
        """Take the last reply and the message it answered off the branch shown (to edit
        and resend it; they stay as a sibling branch); returns that message's text, or
        None when there is no such exchange."""
        if len(self.messages) < 2 or not self.ends_with_reply() \
                or self.messages[-2].role != "user":
            return None
        text = self.messages[-2].content
        self.fork(len(self.messages) - 2)
        return text

    # -- branches (sessions/branches.py) -------------------------------------------------
    def siblings(self, index: int) -> tuple[int, int]:
        """``(k, n)``: message ``index`` is branch k of the n made at its position."""
        return branches.siblings(self.messages, index)

    def switch_branch(self, index: int, step: int) -> bool:
        """Show the previous (-1) or next (+1) sibling branch at message ``index``."""
        self.session.unfork()
        return branches.step(self.messages, index, step)

    def fork(self, index: int) -> None:
        """Start a new branch at ``index`` (the branch shown from there is kept as a
        sibling); the next message added there starts it."""
        self.session.fork(index)

    def unfork(self) -> None:
        self.session.unfork()

    def edit(self, index: int, text: str) -> None:
        """A new branch at the user message ``index``, saying ``text`` instead; the
        conversation then ends with it (the reply is the caller's to ask for)."""
        if not 0 <= index < len(self.messages) or self.messages[index].role != "user":
            raise IndexError(f"message {index + 1} is not one of your messages")
        self.fork(index)
        self.add_user(text)

    def branch_list(self) -> list[branches.BranchInfo]:
        """Every branch of the conversation, the one shown first."""
        return branches.branch_list(self.messages)

    def select_branch(self, number: int) -> bool:
        """Show branch ``number`` of ``branch_list()``."""
        self.session.unfork()
        for info in self.branch_list():
            if info.number == number:
                return branches.select(self.messages, info)
        return False

    def replace_last_reply(self, done: TurnDone) -> None:
        """Put ``done`` in place of the last reply (a reply kept from a comparison)."""
        self.pop_reply()
        self.add_reply(done)

    def clear(self) -> None:
        self.session.parked = None
        self.messages.clear()
