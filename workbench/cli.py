"""The ``workbench`` command: the app by default, plus scriptable subcommands.

Heavy imports (mlx-lm, textual) happen inside each command, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from common.errors import BadSetting, WorkbenchError

from . import eval_cli, models_cli, train_cli
from .flags import model_flags, sampling_flags

# Modules that add subcommands: each has add_parsers(sub) and run(args) -> exit code or None
# (None: not one of its commands).
COMMAND_MODULES = (models_cli, train_cli, eval_cli)

EPILOG = "Run `workbench COMMAND --help` for a command's options."


def build_parser() -> argparse.ArgumentParser:
    sampling, model = sampling_flags(), model_flags()
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Chat with local MLX models in a full-screen terminal, watch tokens/s and "
                    "memory live, hot-swap LoRA adapters. With no command, opens the app.",
        parents=[model, sampling], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # No abbreviations at the top: it scans every argument, and `generate --prompt`
        # would be taken for the prefix of --prompt-lookup (subcommands still allow them).
        allow_abbrev=False,
    )
    parser.add_argument("--theme", help="the app's theme (see the command palette)")
    parser.add_argument("--session", help="open or create this saved session")
    parser.add_argument("--sessions-dir", help="where sessions are kept")
    parser.add_argument("--adapters", metavar="DIR", help="a folder of adapter folders")
    parser.add_argument("--version", action="version", version="workbench 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", parents=[model, sampling],
                       help="one chat turn: reply to stdout, stats to stderr",
                       description="One chat turn through the model's chat template. The "
                                   "reply streams to stdout, statistics go to stderr. "
                                   "Example: workbench generate --demo --prompt 'Hello'")
    g.add_argument("--prompt", "-p",
                   help="the user message ('-' reads stdin; without --prompt, piped stdin is "
                        "the message)")
    g.add_argument("--quiet", "-q", action="store_true", help="no statistics on stderr")

    c = sub.add_parser("chat", parents=[model, sampling],
                       help="line-mode chat for terminals and pipes",
                       description="A line-mode chat. Lines starting with / are commands "
                                   "(/help lists them). Example: workbench chat --plain --demo")
    c.add_argument("--plain", action="store_true",
                   help="line mode (the default for this command; the full-screen app is "
                        "`workbench` itself)")
    c.add_argument("--jsonl", action="store_true", help="one JSON object per stdout line")
    c.add_argument("--logprobs", type=int, default=0, metavar="K",
                   help="with --jsonl: each reply lists its tokens with id, text, logprob "
                        "and the top K alternatives (0-100; default 0: none)")
    c.add_argument("--session", help="resume or create this saved session")
    c.add_argument("--sessions-dir", help="where sessions are kept")
    c.add_argument("--adapters", metavar="DIR", help="a folder of adapter folders")

    b = sub.add_parser("bench", help="measure the engine against raw mlx-lm",
                       description="Alternating runs of raw mlx-lm stream_generate and the "
                                   "engine on the same model and prompt. "
                                   "Example: workbench bench --json")
    b.add_argument("--model", "-m", help="model folder or repo id (default: the demo kit's "
                   "llama, random weights)")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--prompt-tokens", type=int, default=512, help="prompt length (512)")
    b.add_argument("--gen-tokens", type=int, default=256, help="tokens to generate (256)")
    b.add_argument("--history-tokens", type=int, default=1500,
                   help="conversation length for the second-turn test (1500)")
    b.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    b.add_argument("--tui", action="store_true",
                   help="also run the real app headless and measure its throughput and lag")
    b.add_argument("--adapters", action="store_true", help="also measure adapter swaps")
    b.add_argument("--no-big", action="store_true",
                   help="with --adapters: skip the ~0.5B model (it takes minutes on a CPU)")
    b.add_argument("--sessions", action="store_true", help="also measure session resume")

    d = sub.add_parser("demo-model", help="write the demo models and adapters to a folder",
                       description="Build the demo kit offline: the chat demo (a tiny model "
                                   "trained by models/demo_recipe.py, with pirate and brief "
                                   "adapters) plus llama and qwen3 with random weights, their "
                                   "4-bit twins and LoRA/DoRA adapters (for tests and "
                                   "benchmarks). "
                                   "Example: workbench demo-model ./demo")
    d.add_argument("path", help="folder to write: new, empty, or an earlier demo kit (which "
                                "is replaced); any other folder is refused")
    d.add_argument("--size", choices=["0.5b", "1b"],
                   help="instead of the kit, one random llama of this size (for benchmarks)")
    d.add_argument("--bits", type=int, choices=[4, 8],
                   help="with --size: also write a quantized copy to PATH-<bits>bit")
    from .sessions_cli import add_parser as add_sessions_parser

    add_sessions_parser(sub)
    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    return parser


def make_args(argv: list[str] | None = None, **overrides: Any) -> argparse.Namespace:
    """The app's arguments as the ``workbench`` command would parse them, plus overrides."""
    args = build_parser().parse_args(argv or [])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command == "bench":  # flags checked above: --help and typos answer here
        return _run_bench(argv)
    # Distributed (issue 14): under mlx.launch every rank runs this command. Rank 0 goes on
    # to the face asked for; every other rank follows rank 0's engine, headless.
    from engine import distributed

    if distributed.launched():
        try:
            world = distributed.join(getattr(args, "shard", None))
        except WorkbenchError as exc:
            print(f"workbench: {exc}", file=sys.stderr)
            return 2
        if world.rank != 0:
            from engine.distributed_core import follow

            return follow(world)
        if args.command is None:  # the app: keys reach rank 0 through mlx.launch, raw
            distributed.raw_terminal()
    try:
        return _dispatch(args)
    except BadSetting as exc:
        print(f"workbench: {exc}", file=sys.stderr)
        return 2
    except WorkbenchError as exc:  # one line for anything a user can cause
        print(f"workbench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command == "demo-model":
        return _demo_model(args)
    if command == "generate":
        from .generate import run_generate

        return run_generate(args)
    if command == "chat":
        from .plain_run import run_plain

        return run_plain(args)
    if command == "sessions":
        from .sessions_cli import run as run_sessions

        return run_sessions(args)
    for module in COMMAND_MODULES:
        handled = module.run(args)
        if handled is not None:
            return handled
    from .tui.app import run_app

    return run_app(args)


def _run_bench(argv: list[str]) -> int:
    """``workbench bench`` runs the benchmarks as their own program (``python -m
    bench.engine``, same flags): the benchmarks drive the faces, so the faces never import
    them. Ctrl+C reaches the benchmark, which stops and reports."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "bench.engine", *argv])
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


def _demo_model(args: argparse.Namespace) -> int:
    """Build the demo kit (or one sized model) at ``args.path``. A folder that holds anything
    but an earlier demo is refused before anything is written; the MLX work runs on the
    engine thread."""
    from engine import Engine
    from models import demo

    from .runtime import on_engine

    if args.size:
        path = args.path
        quantized = f"{str(path).rstrip('/')}-{args.bits}bit" if args.bits else None
        demo.check_model_folder(path)
        if quantized:
            demo.check_model_folder(quantized)
    else:
        demo.check_kit_folder(args.path)
    with Engine() as engine:
        if args.size:
            built = on_engine(engine, lambda: demo.build_model(path, demo.SIZED[args.size]))
            print(built)
            if quantized:
                print(on_engine(engine, lambda: demo.quantize(built, quantized,
                                                              bits=args.bits)))
            return 0
        kit = on_engine(engine, lambda: demo.build_demo(
            args.path, lambda msg: print(msg, file=sys.stderr)))
    print(kit.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
