"""``workbench generate``: one chat turn, the reply streamed to stdout, stats to stderr."""

from __future__ import annotations

import argparse
import sys

from engine import Error, Notice, TokenText, TurnDone, TurnStats

from .runtime import choose_model_on, demo_label, load_blocking, setup, start_engine


def format_stats(stats: TurnStats) -> str:
    return (f"prompt {stats.prompt_tokens} tok ({stats.reused_tokens} reused, "
            f"{stats.prefill_tokens} prefilled at {stats.prefill_tps:.1f} tok/s) | "
            f"first token {stats.ttft_s * 1000:.0f} ms | "
            f"{stats.generated_tokens} tok at {stats.decode_tps:.1f} tok/s | "
            f"{stats.finish_reason} | peak {stats.peak_memory / 1e6:.0f} MB")


def read_prompt(args: argparse.Namespace) -> str | None:
    """``--prompt``; ``-`` or no ``--prompt`` with stdin piped reads stdin; None when there is
    no prompt at all (no ``--prompt`` and stdin is a terminal)."""
    if args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
        return sys.stdin.read()
    return args.prompt


def error_line(event: Error, max_kv_size: int | None) -> str:
    """The one line to print for an engine error, with advice that fits a one-shot command
    (the engine's messages speak to the line-mode chat, e.g. "/reset")."""
    if event.kind == "context":
        tokens, limit = event.details.get("prompt_tokens"), event.details.get("limit")
        size = (f"the prompt is {tokens} tokens and the context holds {limit}"
                if tokens is not None and limit is not None else event.message.split(":")[0])
        bigger = (f"a --max-kv-size larger than {max_kv_size}" if max_kv_size
                  else "a model with a longer context")
        return f"{size}: give a shorter prompt (or system prompt), or {bigger}"
    return event.message


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
        loaded = load_blocking(engine, choice, quiet=args.quiet)
        if isinstance(loaded, Error):
            print(f"workbench: {loaded.message}", file=sys.stderr)
            return 1
        if loaded.is_demo and not args.quiet:
            print(f"note: {demo_label(loaded)}", file=sys.stderr)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        code = 0
        try:
            for event in engine.chat(messages, params):
                if isinstance(event, TokenText):
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, Notice):
                    print(f"\nnote: {event.message}", file=sys.stderr)
                elif isinstance(event, TurnDone):
                    sys.stdout.write("\n")
                    if not args.quiet:
                        print(format_stats(event.stats), file=sys.stderr)
                elif isinstance(event, Error):
                    max_kv = getattr(args, "max_kv_size", None) or config.max_kv_size or None
                    print(f"\nworkbench: {error_line(event, max_kv)}", file=sys.stderr)
                    code = 1
        except KeyboardInterrupt:
            engine.cancel()
            code = 130
        return code


def _say(message: str) -> None:
    print(message, file=sys.stderr)
