"""The transcript: what a session is, and its human-readable TOML form.

The transcript is the truth of a conversation (the prompt cache only saves time), so
reading it is strict and explains itself: every problem is one line naming the field and
what to do, raised as ``BadSession``; a transcript of a newer schema is refused with
``SessionTooNew``. Reading uses ``tomllib`` only and never writes anything.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import tomli_w

from common.errors import BadSetting
from engine.sampling import SamplingParams

from . import branches
from .errors import BadSession, SessionTooNew

# 2: the branch tree (each message has an id and a parent; see sessions/branches.py).
SCHEMA_VERSION = 2
ROLES = ("user", "assistant")
_STAT_TYPES = (int, float, str, bool)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class SessionMessage:
    """One message. ``adapter`` names the adapter a reply was made with ("" = none);
    ``stats`` holds the reply's ``TurnStats.to_dict()``; ``cancelled`` marks a reply the
    user stopped (its text is what had arrived)."""

    role: str
    content: str
    time: datetime = field(default_factory=now)
    adapter: str = ""
    cancelled: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    # The system prompt a reply was written under; None: the session's (as it is now).
    system_prompt: str | None = None
    # Optional, for training on sessions (``workbench train --sessions``): a reply the user
    # marked good, and the user's corrected text of a reply (the training target; ``content``
    # stays what the model wrote). Absent from older files, written only when set.
    good: bool = False
    edited: str | None = None
    # Branches (sessions/branches.py): the sibling branches that part from this one at this
    # message, and this branch's number among its siblings.
    alternatives: list[list[SessionMessage]] = field(default_factory=list, repr=False)
    branch_no: int = 1


@dataclass
class Session:
    """A conversation and the settings it was held with. ``name`` is its file name."""

    name: str
    title: str = ""
    created: datetime = field(default_factory=now)
    updated: datetime = field(default_factory=now)
    model: str = ""  # repo id or folder, as given to Engine.load
    model_fingerprint: str = ""
    adapter: str = ""  # adapter folder ("" = none)
    adapter_scale: float = 1.0
    system_prompt: str = ""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Chat-template arguments the conversation is rendered with (e.g. enable_thinking).
    template_args: dict[str, bool | int | float | str] = field(default_factory=dict)
    # The KV-cache quantization the conversation's cache is written with (the optional
    # [kv] table: bits, group_size, start; empty = full precision). See
    # engine/speculative.py KVSettings: a saved cache is valid only under the same ones.
    kv: dict[str, int] = field(default_factory=dict)
    messages: list[SessionMessage] = field(default_factory=list)  # the branch shown
    problems: list[str] = field(default_factory=list)  # harmless oddities found on reading
    # A fork waiting for the message that starts its new branch (see fork()).
    parked: branches.Parked | None = field(default=None, repr=False)

    def fresh_copy(self, name: str) -> Session:
        """A new, empty conversation named ``name`` with this one's model, adapter and
        settings (a reset: the old session stays as it was saved)."""
        return replace(self, name=name, title="", created=now(), updated=now(), messages=[],
                       problems=[], parked=None, template_args=dict(self.template_args),
                       kv=dict(self.kv))

    # -- the conversation ----------------------------------------------------------------
    def add_user(self, text: str) -> SessionMessage:
        return self._append(SessionMessage("user", text))

    def add_reply(self, text: str, stats: dict[str, Any] | None = None, adapter: str = "",
                  cancelled: bool = False) -> SessionMessage:
        return self._append(SessionMessage("assistant", text, adapter=adapter,
                                           cancelled=cancelled, stats=dict(stats or {}),
                                           system_prompt=self.system_prompt))

    def _append(self, msg: SessionMessage) -> SessionMessage:
        if self.parked is not None and self.parked.position == len(self.messages):
            branches.attach(self.parked, msg)
            self.parked = None
        self.messages.append(msg)
        return msg

    # -- branches ------------------------------------------------------------------------
    def fork(self, index: int) -> None:
        """Start a new branch at ``index``: what is shown from there on becomes a sibling
        branch, and the next message added there starts the new one."""
        self.unfork()
        self.parked = branches.fork(self.messages, index)

    def unfork(self) -> None:
        """A fork that got no message (its turn failed): show the branch it replaced."""
        if self.parked is not None:
            parked, self.parked = self.parked, None
            branches.restore(self.messages, parked)

    def pop(self) -> SessionMessage:
        """Remove the last message; if it started a branch, show the one it replaced."""
        msg = self.messages.pop()
        if msg.alternatives:
            self.parked = branches.Parked(len(self.messages), msg.alternatives, msg.branch_no)
            msg.alternatives = []
            self.unfork()
        return msg

    def chat_messages(self) -> list[dict[str, str]]:
        """The messages to give ``Engine.chat`` (the system prompt first).

        A reply with no text (cancelled before its first token) is left out; a cancelled
        reply with text stays in, as the user saw it.
        """
        out = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for m in self.messages:
            if m.role == "assistant" and not m.content:
                continue
            out.append({"role": m.role, "content": m.content})
        return out

    def system_prompt_of(self, message: SessionMessage) -> str:
        """The system prompt ``message`` (a reply) was written under."""
        return self.system_prompt if message.system_prompt is None else message.system_prompt

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")

    def default_title(self) -> str:
        for m in self.messages:
            if m.role == "user" and m.content.strip():
                line = m.content.strip().splitlines()[0]
                return line if len(line) <= 60 else line[:59].rstrip() + "…"
        return self.name

    # -- TOML ----------------------------------------------------------------------------
    def to_toml_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "title": self.title,
            "created": self.created,
            "updated": self.updated,
            "system_prompt": self.system_prompt,
            "model": {"id": self.model, "fingerprint": self.model_fingerprint},
            "adapter": {"path": self.adapter, "scale": float(self.adapter_scale)},
            "sampling": {k: v for k, v in self.sampling.to_dict().items() if v is not None},
            "messages": [],
        }
        if self.template_args:
            data["template"] = dict(self.template_args)
        if self.kv:
            data["kv"] = dict(self.kv)
        for m, node_id, parent, alt in branches.flatten(self.messages):
            entry: dict[str, Any] = {"role": m.role, "content": m.content, "time": m.time,
                                     "id": node_id, "parent": parent}
            if alt:
                entry["alt"] = True
            if m.branch_no != 1:
                entry["branch"] = m.branch_no
            if m.role == "assistant":
                entry["adapter"] = m.adapter
                entry["cancelled"] = m.cancelled
                if m.system_prompt is not None and m.system_prompt != self.system_prompt:
                    entry["system_prompt"] = m.system_prompt
                if m.good:
                    entry["good"] = True
                if m.edited is not None:
                    entry["edited"] = m.edited
                if m.stats:
                    entry["stats"] = {k: v for k, v in m.stats.items()
                                      if isinstance(v, _STAT_TYPES)}
            data["messages"].append(entry)
        return data

    def to_toml(self) -> str:
        """Long texts as readable multi-line strings, unless a text holds a carriage return
        (a TOML multi-line string would turn its CRLF into LF)."""
        every = [m for m, *_ in branches.flatten(self.messages)]
        texts = [self.title, self.system_prompt, *(m.content for m in every),
                 *(m.system_prompt or "" for m in every), *(m.edited or "" for m in every)]
        readable = not any("\r" in t for t in texts)
        return tomli_w.dumps(self.to_toml_data(), multiline_strings=readable)


# -- reading -------------------------------------------------------------------------------
class _Reader:
    """Checks one TOML table field by field; ``where`` names it in messages."""

    def __init__(self, name: str, table: dict[str, Any], where: str,
                 problems: list[str]) -> None:
        self.name, self.table, self.where, self.problems = name, table, where, problems

    def fail(self, what: str) -> BadSession:
        return BadSession(f"session {self.name!r} cannot be read: {self.where}{what}; fix or "
                          "remove that part of the file (it was left unchanged)")

    def get(self, key: str, kinds: tuple[type, ...], label: str, default: Any) -> Any:
        if key not in self.table:
            return default
        value = self.table[key]
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(f"{key} must be {label}, not {value!r}")
        if not isinstance(value, kinds):
            raise self.fail(f"{key} must be {label}, not {_short(value)}")
        return value

    def text(self, key: str, default: str = "") -> str:
        return str(self.get(key, (str,), "text", default))

    def time(self, key: str, default: datetime) -> datetime:
        value = self.get(key, (datetime, date), "a date and time", default)
        if not isinstance(value, datetime):
            raise self.fail(f"{key} must be a date and time, not the date {value}")
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

    def table_(self, key: str) -> dict[str, Any]:
        return dict(self.get(key, (dict,), "a table", {}))

    def unknown(self, known: set[str]) -> None:
        for key in self.table:
            if key not in known:
                self.problems.append(f"{self.where}unknown key {key!r} (ignored: it is not kept "
                                     "when the session is saved)")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_session(name: str, text: bytes | str) -> Session:
    """Build a Session from a transcript's bytes, or raise one clear ``SessionError``."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadSession(f"session {name!r} cannot be read: it is not UTF-8 text (byte "
                             f"{exc.start}); the file was left unchanged") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadSession(f"session {name!r} cannot be read: not valid TOML ({exc}); fix the "
                         "file by hand or delete it (it was left unchanged)") from None
    except RecursionError:
        raise BadSession(f"session {name!r} cannot be read: its TOML is nested too deeply; "
                         "the file was left unchanged") from None
    return session_from_data(name, data)


def check_schema(name: str, data: dict[str, Any]) -> int:
    schema = data.get("schema")
    if schema is None:
        raise BadSession(f"session {name!r} has no schema version: it is not a workbench "
                         "session file (it was left unchanged)")
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise BadSession(f"session {name!r} has a bad schema version {_short(schema)}: it is "
                         "not a workbench session file (it was left unchanged)")
    if schema > SCHEMA_VERSION:
        raise SessionTooNew(f"session {name!r} was written by a newer workbench (schema "
                            f"{schema}; this one reads up to {SCHEMA_VERSION}): update the "
                            "workbench to open it; the file was left untouched")
    return schema


def session_from_data(name: str, data: dict[str, Any]) -> Session:
    check_schema(name, data)
    problems: list[str] = []
    top = _Reader(name, data, "", problems)
    top.unknown({"schema", "title", "created", "updated", "system_prompt", "model", "adapter",
                 "sampling", "template", "messages", "kv"})
    created = top.time("created", now())
    session = Session(
        name=name,
        title=top.text("title"),
        created=created,
        updated=top.time("updated", created),
        system_prompt=top.text("system_prompt"),
        problems=problems,
    )
    model = _Reader(name, top.table_("model"), "[model] ", problems)
    model.unknown({"id", "fingerprint"})
    session.model = model.text("id")
    session.model_fingerprint = model.text("fingerprint")
    adapter = _Reader(name, top.table_("adapter"), "[adapter] ", problems)
    adapter.unknown({"path", "scale"})
    session.adapter = adapter.text("path")
    scale = adapter.get("scale", (int, float), "a number", 1.0)
    if scale != scale or abs(scale) == float("inf"):
        raise adapter.fail(f"scale must be a finite number, not {scale}")
    session.adapter_scale = float(scale)
    session.sampling = _sampling(name, top.table_("sampling"), problems)
    template = _Reader(name, top.table_("template"), "[template] ", problems)
    for key in template.table:
        session.template_args[key] = template.get(key, (bool, int, float, str),
                                                  "true, false, a number or text", None)
    session.kv = _kv(name, top.table_("kv"), problems)
    raw = top.get("messages", (list,), "a list of [[messages]] tables", [])
    rows = []
    for i, entry in enumerate(raw, 1):
        message = _message(name, i, entry, created, problems)
        r = _Reader(name, entry, f"message {i}: ", problems)
        node_id = r.get("id", (int,), "a whole number", i)
        parent = r.get("parent", (int,), "a whole number", i - 1)
        message.branch_no = r.get("branch", (int,), "a whole number", 1)
        rows.append((message, node_id, parent, bool(r.get("alt", (bool,), "true or false",
                                                           False))))
    try:
        session.messages = branches.rebuild(rows, problems)
    except ValueError as exc:
        raise BadSession(f"session {name!r} cannot be read: its branches do not form a tree "
                         f"({exc}); fix the ids and parents (the file was left unchanged)"
                         ) from None
    return session


def _kv(name: str, table: dict[str, Any], problems: list[str]) -> dict[str, int]:
    """The [kv] table (KV-cache quantization); a bad one is a problem noted, and dropped."""
    if not table:
        return {}
    from engine.speculative import KVSettings

    reader = _Reader(name, table, "[kv] ", problems)
    reader.unknown({"bits", "group_size", "start"})
    try:
        kv = KVSettings.from_dict({k: reader.get(k, (int,), "a whole number", None)
                                   for k in ("bits", "group_size", "start")
                                   if k in table})
    except (BadSetting, TypeError, ValueError) as exc:
        problems.append(f"session {name!r}: [kv] is ignored ({exc})")
        return {}
    return kv.to_dict()


def _sampling(name: str, table: dict[str, Any], problems: list[str]) -> SamplingParams:
    params = SamplingParams()
    for key, value in table.items():
        try:
            params = params.with_values(**{key: value})
        except BadSetting as exc:
            problems.append(f"[sampling] {exc} (the default is used)")
        except TypeError:  # pragma: no cover - with_values checks keys and types itself
            problems.append(f"[sampling] {key} = {_short(value)} ignored")
    return params


def _message(name: str, index: int, entry: Any, default_time: datetime,
             problems: list[str]) -> SessionMessage:
    where = f"message {index}: "
    if not isinstance(entry, dict):
        raise BadSession(f"session {name!r} cannot be read: {where}must be a [[messages]] "
                         f"table, not {_short(entry)}; the file was left unchanged")
    r = _Reader(name, entry, where, problems)
    r.unknown({"role", "content", "time", "adapter", "cancelled", "stats", "system_prompt",
               "id", "parent", "alt", "branch", "good", "edited"})
    role = r.get("role", (str,), "user or assistant", None)
    if role not in ROLES:
        raise r.fail(f"role must be 'user' or 'assistant', not {_short(role)}")
    if "content" not in entry:
        raise r.fail("has no content")
    stats = r.table_("stats")
    for key, value in stats.items():
        if not isinstance(value, _STAT_TYPES):
            raise r.fail(f"stats.{key} must be a number or text, not {_short(value)}")
    return SessionMessage(
        role=role,
        content=r.text("content"),
        time=r.time("time", default_time),
        adapter=r.text("adapter"),
        cancelled=bool(r.get("cancelled", (bool,), "true or false", False)),
        stats=stats,
        system_prompt=r.text("system_prompt") if "system_prompt" in entry else None,
        good=bool(r.get("good", (bool,), "true or false", False)),
        edited=r.text("edited") if "edited" in entry else None,
    )
