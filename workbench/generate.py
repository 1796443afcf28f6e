"""``workbench generate``: one chat turn, the reply streamed to stdout, stats to stderr."""

from __future__ import annotations

import argparse
import sys

from engine import EngineAPI, EngineError, Notice, TokenText, TurnOptions, follow_sync

from .formatting import format_stats, plural
from .runtime import choose_model_on, demo_label, load_blocking, setup, start_engine


def read_prompt(args: argparse.Namespace) -> str | None:
    """``--prompt``; ``-`` or no ``--prompt`` with stdin piped reads stdin; None when there is
    no prompt at all (no ``--prompt`` and stdin is a terminal)."""
    if args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    return args.prompt


def error_line(error: EngineError, max_kv_size: int | None) -> str:
    """The one line to print for an engine error, with advice that fits a one-shot command
    (the engine's messages speak to the line-mode chat, e.g. "/reset")."""
    if error.kind == "context":
        tokens, limit = error.details.get("prompt_tokens"), error.details.get("limit")
        size = (f"the prompt is {plural(tokens, 'token')} and the context holds {limit}"
                if isinstance(tokens, int) and limit is not None else str(error).split(":")[0])
        bigger = (f"a --max-kv-size larger than {max_kv_size}" if max_kv_size
                  else "a model with a longer context")
        return f"{size}: give a shorter prompt (or system prompt), or {bigger}"
    return str(error)


def adapter_problem(engine: EngineAPI, adapter: str | None) -> str | None:
    """Why ``--adapter`` cannot be used: its folder is missing or not an adapter (and, once
    a model is loaded, it was made for another); None when there is none or it is usable."""
    if not adapter:
        return None
    info = engine.check_adapter(adapter).result_sync()
    return None if info.valid else f"--adapter {adapter} cannot be used: {info.reason}"


def run_generate(args: argparse.Namespace) -> int:
    prompt = read_prompt(args)
    if prompt is None:
        print("workbench: generate needs a prompt: --prompt TEXT, or pipe it in "
              "(echo hi | workbench generate)", file=sys.stderr)
        return 2
    config, params = setup(args)
    system = args.system if args.system is not None else (config.system_prompt or None)
    with start_engine(args, config) as engine:
        choice = choose_model_on(engine, args, config, None if args.quiet else _say)
        problem = adapter_problem(engine, choice.adapter)  # its files, before the load
        if problem is not None:  # a one-shot reply without the adapter asked for is wrong
            print(f"workbench: {problem}", file=sys.stderr)
            return 2
        loaded = load_blocking(engine, choice, quiet=args.quiet)  # EngineError: one line
        if choice.adapter and not loaded.adapter:  # the files are fine, the model is not
            problem = adapter_problem(engine, choice.adapter)  # now against the model
            print(f"workbench: {problem or f'--adapter {choice.adapter} was not applied'}",
                  file=sys.stderr)
            return 1
        if loaded.is_demo and not args.quiet:
            print(f"note: {demo_label(loaded)}", file=sys.stderr)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})

        def write(event: TokenText) -> None:
            sys.stdout.write(event.text)
            sys.stdout.flush()

        try:
            thinking = getattr(args, "thinking", None)
            options = TurnOptions(template_args={} if thinking is None else
                                  {"enable_thinking": thinking == "on"})
            done = follow_sync(engine.chat(messages, params, options=options), {
                TokenText: write,
                Notice: lambda e: print(f"\nnote: {e.message}", file=sys.stderr)})
        except EngineError as exc:
            max_kv = getattr(args, "max_kv_size", None) or config.max_kv_size or None
            print(f"\nworkbench: {error_line(exc, max_kv)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            engine.cancel()
            return 130
        sys.stdout.write("\n")
        sys.stdout.flush()  # the reply ends before the stats line on stderr begins
        if not args.quiet:
            print(format_stats(done.stats), file=sys.stderr)
        return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr)
