"""``workbench chat --plain``: what runs before and around the line-mode chat (``PlainChat``,
workbench/plain.py): the flags, the session to open, the model load, the input loop, and
the session's last save when the chat ends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import WorkbenchError
from engine import EngineError, TurnOptions
from sessions import Session, SessionStore

from .plain import PlainChat
from .plain_io import Output, interactive_lines, piped_lines
from .runtime import (
    choose_model_on,
    demo_adapters,
    demo_label,
    load_blocking,
    setup,
    start_engine,
)


def run_plain(args: argparse.Namespace) -> int:
    TurnOptions(logprobs=args.logprobs)  # BadSetting (one line, exit 2) before any loading
    config, params = setup(args)
    out = Output(args.jsonl)
    sessions_dir = Path(args.sessions_dir).expanduser() if args.sessions_dir else \
        config.sessions_path()
    store: SessionStore | None = None
    session = Session(name="unsaved", system_prompt=args.system if args.system is not None
                      else config.system_prompt)
    if args.session:
        try:
            store = SessionStore(sessions_dir)
            session, _created = store.open_or_new(args.session, lock=True,
                                                  system_prompt=session.system_prompt)
        except WorkbenchError as exc:
            out.error(str(exc), exc.kind)
            return 1
        if args.system is not None:
            session.system_prompt = args.system
        if not args.model and not args.demo and session.model:
            args.model = session.model
        # The KV quantization the session's cache was written with, unless flags say else.
        if session.kv and getattr(args, "kv_bits", None) is None:
            for key, flag in (("bits", "kv_bits"), ("group_size", "kv_group_size"),
                              ("start", "quantized_kv_start")):
                if session.kv.get(key) is not None:
                    setattr(args, flag, session.kv[key])
    with start_engine(args, config) as engine:
        choice = choose_model_on(engine, args, config, lambda msg: print(msg, file=sys.stderr))
        try:
            loaded = load_blocking(engine, choice, quiet=args.jsonl)
        except EngineError as exc:
            out.error(str(exc), exc.kind)
            return 1
        if loaded.is_demo:
            out.notice(demo_label(loaded))
        session.model = choice.spec
        from .runtime import decoding_from_args

        session.kv = decoding_from_args(args).kv.to_dict()
        adapter_dirs = [d for d in (args.adapters, str(config.adapters_path()),
                                    demo_adapters(loaded)) if d]
        chat = PlainChat(engine, out, params, session, store, adapter_dirs,
                         [choice.adapter] if choice.adapter else [])
        chat.default_sessions_dir = sessions_dir
        chat.logprobs = args.logprobs or 0
        if args.thinking is not None:
            chat.conv.set_thinking(args.thinking == "on")
        # Distributed (issue 14): a rank that fails ends the job; the transcript is saved
        # first. Sharded prompt caches are not saved (engine/distributed.py).
        from engine import distributed

        def save_transcript() -> None:
            if chat.store is not None:
                chat.store.save(chat.session)

        distributed.on_failure(save_transcript)
        if distributed.current() is not None and store is not None:
            out.notice("distributed mode: the session's transcript is saved, its prompt "
                       "cache is not (each rank holds only its shard)")
        if store is not None:
            try:
                out.command("load", True, chat.resume())
            except WorkbenchError as exc:
                out.error(str(exc), exc.kind)
        interactive = sys.stdin.isatty() and not args.jsonl
        if interactive:
            out.command("help", True, f"{loaded.name} loaded. /help lists commands; Alt+Enter "
                        "adds a line; Ctrl+C stops a reply; Ctrl+D leaves.")
        lines = interactive_lines() if interactive else piped_lines()
        try:
            for line in lines:
                chat.handle_line(line)
                if not chat.running:
                    break
        finally:
            if chat.store is not None:
                chat.close_session()
                chat.store.close()
    return 0
