"""``workbench sessions``: list, show, export, rename and delete saved sessions from a shell.

No model is loaded and MLX is never imported: these commands read the transcripts (and
the cache files' headers) only, so they are instant and safe to script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common.formats import fmt_bytes
from models.resolve import short_model

from .formatting import plural

EXAMPLES = """examples:
  workbench sessions            (the same as `workbench sessions list`)
  workbench sessions list
  workbench sessions show my-chat
  workbench sessions export my-chat --format md > my-chat.md
  workbench sessions rename my-chat holiday-plans
  workbench sessions delete my-chat --yes"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sessions`` command to the ``workbench`` parser's subparsers."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--sessions-dir", default=argparse.SUPPRESS, metavar="DIR",
                       help="where sessions are kept (default: the config's, else the "
                            "platform data folder)")
    p = subparsers.add_parser(
        "sessions", parents=[where], help="list, show, export, rename or delete saved sessions",
        description="Saved conversations: NAME.toml transcripts with NAME.safetensors prompt "
                    "caches in the sessions folder.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    # No action lists, as `list` does.
    p.set_defaults(sessions_command="list", filter="", json=False)
    sub = p.add_subparsers(dest="sessions_command", metavar="ACTION")
    ls = sub.add_parser("list", parents=[where], help="the saved sessions, latest first")
    ls.add_argument("--filter", default="", metavar="TEXT",
                    help="only sessions whose name, title, model or adapter contains TEXT")
    ls.add_argument("--json", action="store_true", help="one JSON array")
    show = sub.add_parser("show", parents=[where], help="a session's settings and transcript")
    show.add_argument("name")
    ex = sub.add_parser("export", parents=[where], help="a session as Markdown or JSON")
    ex.add_argument("name")
    ex.add_argument("--format", choices=("md", "json"), default="md", help="md (default) or json")
    ex.add_argument("--output", "-o", metavar="FILE",
                    help="write to FILE (private, 0600) instead of stdout; an existing FILE "
                         "is kept unless --force; a session's own files never")
    ex.add_argument("--force", "-f", action="store_true",
                    help="with --output: overwrite FILE if it exists")
    ex.add_argument("--branches", choices=("current", "all"), default="current",
                    help="the branch last shown (default) or every branch of the conversation")
    rm = sub.add_parser("delete", parents=[where], help="delete a session and its cache")
    rm.add_argument("name")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    mv = sub.add_parser("rename", parents=[where], help="rename a session")
    mv.add_argument("name")
    mv.add_argument("new_name")
    return p


def sessions_folder(args: argparse.Namespace) -> Path:
    given = getattr(args, "sessions_dir", None)
    if given:
        return Path(given).expanduser()
    from .config import load_config

    return load_config().sessions_path()


def run(args: argparse.Namespace) -> int:
    from sessions import SessionError, SessionStore

    store = SessionStore(sessions_folder(args))
    action = args.sessions_command or "list"
    try:
        with store:
            store.check_folder()
            if action == "list":
                return _list(store, args)
            if action == "show":
                return _show(store, args.name)
            if action == "export":
                return _export(store, args)
            if action == "delete":
                return _delete(store, args)
            if action == "rename":
                store.rename(args.name, args.new_name)
                print(f"renamed session {args.name!r} to {args.new_name!r}")
                return 0
    except SessionError as exc:
        print(f"workbench: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"workbench: {exc.strerror or exc}: {exc.filename or store.folder}",
              file=sys.stderr)
        return 1
    finally:
        for notice in store.take_notices():
            print(f"workbench: note: {notice}", file=sys.stderr)
    raise AssertionError(action)  # pragma: no cover - argparse restricts the choices


def _list(store: Any, args: argparse.Namespace) -> int:
    rows = store.list(args.filter)
    if args.json:
        print(json.dumps([_row_data(r) for r in rows], indent=2, ensure_ascii=False))
        return 0
    if not rows:
        what = f"matching {args.filter!r} " if args.filter else ""
        print(f"no saved sessions {what}in {store.folder}")
        return 0
    table = [("NAME", "TITLE", "MODEL", "ADAPTER", "TURNS", "LAST USED", "SIZE")]
    for r in rows:
        if r.problem:
            table.append((r.name, f"(cannot be opened: {r.problem})", "", "", "", "",
                          fmt_bytes(r.size_bytes)))
            continue
        table.append((r.name, _clip(r.title, 40), _clip(short_model(r.model) or "-", 28),
                      _clip(Path(r.adapter).name if r.adapter else "-", 16), str(r.turns),
                      f"{r.updated.astimezone():%Y-%m-%d %H:%M}" if r.updated else "-",
                      fmt_bytes(r.size_bytes)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[-1]]
        print("  ".join(cells).rstrip())
    return 0


def _row_data(r: Any) -> dict[str, Any]:
    return {"name": r.name, "title": r.title, "model": r.model, "adapter": r.adapter,
            "turns": r.turns, "created": r.created.isoformat() if r.created else None,
            "updated": r.updated.isoformat() if r.updated else None,
            "toml_bytes": r.toml_bytes, "cache_bytes": r.cache_bytes,
            "size_bytes": r.size_bytes, "problem": r.problem}


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _show(store: Any, name: str) -> int:
    session = store.open(name)
    facts = [
        ("session", session.name),
        ("title", session.title or session.default_title()),
        ("model", session.model or "-"),
        ("adapter", f"{session.adapter} (scale {session.adapter_scale:g})"
         if session.adapter else "none"),
        ("created", f"{session.created.astimezone():%Y-%m-%d %H:%M:%S}"),
        ("updated", f"{session.updated.astimezone():%Y-%m-%d %H:%M:%S}"),
        ("turns", f"{session.turns} ({plural(len(session.messages), 'message')})"),
        ("sampling", ", ".join(f"{k}={v}" for k, v in session.sampling.to_dict().items()
                               if v is not None)),
        ("transcript", f"{store.transcript_path(name)} "
                       f"({fmt_bytes(store.transcript_path(name).stat().st_size)})"),
        ("cache", _cache_line(store, session)),
    ]
    if session.system_prompt:
        facts.append(("system", session.system_prompt))
    for label, value in facts:
        print(f"{label:<10} {value}")
    for problem in session.problems:
        print(f"{'note':<10} {problem}")
    for m in session.messages:
        who = "you" if m.role == "user" else "assistant"
        extra = " (cancelled)" if m.cancelled else ""
        print(f"\n{who}{extra}> {m.content}")
    return 0


def _cache_line(store: Any, session: Any) -> str:
    from models.fingerprint import model_fingerprint
    from sessions import read_cache_header
    from sessions.cache import CacheUnusable

    path = store.cache_path(session.name)
    if not path.exists():
        return "none (the next resume reads the whole transcript)"
    try:
        header = read_cache_header(path)
    except CacheUnusable as why:
        return f"{path.name} {why}: it will be set aside and rebuilt on resume"
    tokens = header.tokens
    line = (f"{path} ({fmt_bytes(header.file_bytes)}, "
            f"{plural(len(tokens), 'token') if tokens is not None else '? tokens'})")
    model = Path(session.model).expanduser() if session.model else None
    stored = header.metadata.get("workbench_fingerprint", "")
    if model is not None and (model / "config.json").is_file():
        if model_fingerprint(model) == stored:
            line += ", made with this model"
        else:
            line += ", made with another model: it will be rebuilt on resume"
    return line


def _export(store: Any, args: argparse.Namespace) -> int:
    from sessions import export_json, export_markdown
    from sessions.export import write_export

    session = store.open(args.name)
    text = export_markdown(session, args.branches) if args.format == "md" else \
        export_json(session, args.branches)
    if args.output:
        out = write_export(store, text, args.output, force=args.force)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _delete(store: Any, args: argparse.Namespace) -> int:
    summary = store.summary(args.name)
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"workbench: add --yes to delete session {args.name!r} without a question",
                  file=sys.stderr)
            return 1
        answer = input(f"delete session {args.name!r} ({plural(summary.turns, 'turn')}, "
                       f"{fmt_bytes(summary.size_bytes)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept it")
            return 1
    removed = store.delete(args.name)
    print(f"deleted session {args.name!r} ({', '.join(p.name for p in removed)})")
    return 0
