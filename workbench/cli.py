"""The ``workbench`` command: the app by default, plus scriptable subcommands.

Heavy imports (mlx-lm, textual) happen inside each command, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from common.errors import BadSetting, WorkbenchError
from engine.sampling import PRESETS, SamplingParams, preset

from . import eval_cli, models_cli, train_cli

# Modules that add subcommands: each has add_parsers(sub) and run(args) -> exit code or None
# (None: not one of its commands).
COMMAND_MODULES = (models_cli, train_cli, eval_cli)

EPILOG = "Run `workbench COMMAND --help` for a command's options."


def _sampling_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sampling (defaults: the config's, else mlx-lm's)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a named set of sampling values")
    g.add_argument("--temp", type=float, dest="temperature", help="temperature (0 = greedy)")
    g.add_argument("--top-p", type=float, help="nucleus sampling, 0 < p <= 1 (1 = off)")
    g.add_argument("--min-p", type=float, help="min-p sampling, 0..1 (0 = off)")
    g.add_argument("--top-k", type=int, help="top-k sampling (0 = off)")
    g.add_argument("--repetition-penalty", type=float, help="1 = off, up to 3")
    g.add_argument("--max-tokens", type=int, help="longest reply, in tokens")
    g.add_argument("--seed", type=int, help="random seed, for repeatable sampling")
    return p


def _model_flags(required: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", required=required,
                   help="a model folder or a Hugging Face repo id (default: the config's, "
                        "else the demo model)")
    g.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="a LoRA/DoRA adapter folder (mlx-lm format)")
    g.add_argument("--system", "-s", help="the system prompt")
    g.add_argument("--adapter-mode", choices=("auto", "fused", "unfused"), default=None,
                   help="how an adapter runs: unfused (default: exactly what "
                        "mlx_lm.load(adapter_path=...) gives; slower on a GPU), fused "
                        "(merged into a copy of the weights it touches: base-model speed and "
                        "exactly what an `mlx_lm fuse` model gives; costs that memory) or "
                        "auto (fused when the copy fits in memory, else unfused)")
    g.add_argument("--max-kv-size", type=int, default=None, metavar="N",
                   help="cap the context at N tokens (default: the model's)")
    g.add_argument("--thinking", choices=("on", "off"), default=None,
                   help="reasoning models: the chat template's enable_thinking switch "
                        "(default: the template's own)")
    g.add_argument("--demo", action="store_true",
                   help="use the built-in demo model (tiny, trained on a few dozen answers; "
                        "no download)")
    # Distributed (issue 14, docs/distributed.md): only under mlx.launch.
    g.add_argument("--shard", choices=["tensor", "pipeline"], default=None,
                   help="under mlx.launch: split the model over the ranks by tensor "
                        "parallelism (default) or by layers (pipeline: for a model larger "
                        "than one machine's memory)")
    _decoding_flags(p)
    return p


def _decoding_flags(p: argparse.ArgumentParser) -> None:
    """Faster decoding and a smaller cache (engine/speculative.py), with mlx-lm's names."""
    d = p.add_argument_group("decoding (the same replies, faster or in less memory)")
    d.add_argument("--draft-model", metavar="M", default=None,
                   help="speculative decoding with this smaller model of the same family "
                        "(same tokenizer): a folder or a Hugging Face repo id")
    d.add_argument("--num-draft-tokens", type=int, default=None, metavar="N",
                   help="tokens the draft model proposes per step (default 3, as mlx-lm)")
    d.add_argument("--prompt-lookup", type=int, nargs="?", const=10, default=None,
                   metavar="N", help="draft up to N tokens (default 10) from n-grams of the "
                                     "conversation itself: fast when replies repeat it")
    d.add_argument("--prompt-lookup-ngram", type=int, default=None, metavar="N",
                   help="with --prompt-lookup: the longest n-gram looked up (default 3)")
    d.add_argument("--kv-bits", type=int, default=None, metavar="B",
                   help="quantize the KV cache to B bits (2-8; default: none)")
    d.add_argument("--kv-group-size", type=int, default=None, metavar="G",
                   help="with --kv-bits: group size (32, 64 or 128; default 64)")
    d.add_argument("--quantized-kv-start", type=int, default=None, metavar="T",
                   help="with --kv-bits: quantize once the cache holds T tokens (default "
                        "5000, as mlx-lm)")


def sampling_from_args(args: argparse.Namespace, base: SamplingParams) -> SamplingParams:
    """The config's sampling values, then the preset, then each flag given."""
    params = preset(args.preset, max_tokens=base.max_tokens) if args.preset else base
    changes: dict[str, Any] = {}
    for name in ("temperature", "top_p", "min_p", "top_k", "repetition_penalty",
                 "max_tokens", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    return params.with_values(**changes)


def build_parser() -> argparse.ArgumentParser:
    sampling, model = _sampling_flags(), _model_flags()
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
    b.add_argument("--model", "-m", help="model folder or repo id (default: the demo model)")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    if command == "bench":
        from bench.engine import run_bench

        return run_bench(args)
    for module in COMMAND_MODULES:
        handled = module.run(args)
        if handled is not None:
            return handled
    from .tui.app import run_app

    return run_app(args)


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
