"""Turn a session into Markdown (to read or share) or JSON (for scripts), and write it.

``write_export`` never overwrites a file unless told to (``force``), never writes over a
file of the sessions folder (a transcript, cache, lock... of any session, which would lose
it), and writes the file private (0600): a conversation is nobody else's business.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from common.atomic import atomic_write

from .errors import ExportRefused
from .store import SessionStore
from .transcript import Session, SessionMessage


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def export_markdown(session: Session, branches: str = "current") -> str:
    """The conversation as Markdown: a header of settings, then one section per message.
    ``branches="all"`` adds every other branch after the one shown, each from where it
    parts from the branches written before it."""
    text = _markdown(session)
    if branches != "all":
        return text
    from . import branches as tree

    listed = tree.branch_list(session.messages)  # in tree order, the shown one anywhere
    by_id = {id(row[0]): row[0] for row in tree.flatten(session.messages)}
    written = [(info.number, info.path) for info in listed if info.current]
    parts = [text.rstrip()]
    if written and len(listed) > 1:
        parts += ["", f"*Above: branch {written[0][0]} of {len(listed)}, the one shown; the "
                      "others follow.*"]
    for info in listed:
        if info.current:
            continue
        start, like = _parting(info.path, written)
        same = f"; messages 1 to {start} as in branch {like}" if start else ""
        parts += ["", f"# Branch {info.number} of {len(listed)} (from message {start + 1}"
                      f"{same})"]
        for message_id in info.path[start:]:
            parts += _message_section(by_id[message_id])
        written.append((info.number, info.path))
    return "\n".join(parts).rstrip() + "\n"


def _parting(path: tuple[int, ...], written: list[tuple[int, tuple[int, ...]]]
             ) -> tuple[int, int]:
    """How many first messages ``path`` shares with the branch written so far that it
    shares most with, and that branch's number (0 when it shares none)."""
    best, like = 0, 0
    for number, other in written:
        shared = next((i for i, (a, b) in enumerate(zip(path, other, strict=False)) if a != b),
                      min(len(path), len(other)))
        if shared > best:
            best, like = shared, number
    return best, like


def _message_section(m: SessionMessage) -> list[str]:
    """One message's Markdown lines: a heading with its time and notes, the text, its
    statistics."""
    heading = "You" if m.role == "user" else "Assistant"
    notes = [_when(m.time)]
    if m.adapter:
        notes.append(f"adapter {m.adapter}")
    if m.cancelled:
        notes.append("cancelled")
    lines = ["", f"## {heading} ({', '.join(notes)})", "", m.content]
    if m.stats:
        lines += ["", f"*{_stats_line(m.stats)}*"]
    return lines


def _markdown(session: Session) -> str:
    lines = [f"# {session.title or session.default_title()}", ""]
    facts = [("session", session.name), ("model", session.model or "?"),
             ("adapter", f"{session.adapter} (scale {session.adapter_scale:g})"
              if session.adapter else ""),
             ("created", _when(session.created)), ("updated", _when(session.updated))]
    sampling = ", ".join(f"{k}={v}" for k, v in session.sampling.to_dict().items()
                         if v is not None)
    facts.append(("sampling", sampling))
    lines += [f"- **{k}**: {v}" for k, v in facts if v]
    replies = [m for m in session.messages if m.role == "assistant"]
    system = session.system_prompt_of(replies[0]) if replies else session.system_prompt
    if system:
        lines += ["", "## System", "", system]
    for i, m in enumerate(session.messages):
        if m.role == "user":  # a system prompt changed before the reply to this message
            reply = next((r for r in session.messages[i + 1:i + 2] if r.role == "assistant"),
                         None)
            now = session.system_prompt_of(reply) if reply is not None else system
            if now != system:
                system = now
                lines += ["", "## System (changed here)", "", now or "*(none)*"]
        lines += _message_section(m)
    return "\n".join(lines).rstrip() + "\n"


def _stats_line(stats: dict[str, Any]) -> str:
    parts = []
    if "generated_tokens" in stats:
        count = int(stats["generated_tokens"])
        parts.append(f"{count} token{'' if count == 1 else 's'}")
    if "decode_tps" in stats:
        parts.append(f"{float(stats['decode_tps']):.1f} tok/s")
    if "ttft_s" in stats:
        parts.append(f"first token {float(stats['ttft_s']) * 1000:.0f} ms")
    if "finish_reason" in stats:
        parts.append(str(stats["finish_reason"]))
    return " · ".join(parts) or "no statistics"


def export_data(session: Session, branches: str = "current") -> dict[str, Any]:
    """The transcript as plain JSON-ready data (times as ISO 8601 text): the branch shown
    (``branches="current"``) or the whole tree (``"all"``: every message with its id and
    parent, as in the session file)."""
    data = session.to_toml_data()
    data["name"] = session.name
    if branches != "all":  # the shown branch is written first, as ids 1..n
        data["messages"] = data["messages"][:len(session.messages)]

    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return dict(plain(data))


def export_json(session: Session, branches: str = "current") -> str:
    return json.dumps(export_data(session, branches), indent=2, ensure_ascii=False) + "\n"


def write_export(store: SessionStore, text: str, path: str | Path, *,
                 force: bool = False) -> Path:
    """Write ``text`` to ``path`` (0600, atomically) and return the path written.

    Raises ``ExportRefused`` (one line) for a file of ``store``'s folder, a folder, or an
    existing file without ``force``; nothing is written then.
    """
    out = Path(path).expanduser()
    if store.is_session_file(out):
        raise ExportRefused(f"{out} is one of the sessions folder's own files: writing it "
                            "would damage a session; export to a file outside "
                            f"{store.folder}")
    if out.is_dir():
        raise ExportRefused(f"{out} is a folder: give a file name, e.g. {out / 'chat.md'}")
    if os.path.lexists(out) and not force:
        raise ExportRefused(f"{out} exists: add --force to overwrite it, or give another "
                            "file name")
    try:
        atomic_write(out, text.encode("utf-8"), mode=0o600, overwrite=force)
    except FileExistsError:
        raise ExportRefused(f"{out} appeared while exporting: add --force to overwrite it, or "
                            "give another file name") from None
    return out
