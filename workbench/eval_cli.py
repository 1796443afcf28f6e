"""``workbench eval`` and ``workbench fuse``: judge a fine-tune, then bake it into a model.

``eval`` answers a prompt set with the base model and up to four adapters (or scales) side
by side, with tokens/s and, given a data folder, mlx-lm's validation loss and perplexity;
the report goes to stdout as Markdown, or to new files (``--markdown``, ``--json``; an
existing file is never replaced). ``fuse`` is ``mlx_lm fuse`` with progress, in a child
process, into a new folder that the models screen then lists.

Progress goes to stderr, the result to stdout, every failure is one line on stderr and a
non-zero exit. Imports stay inside the commands so that ``workbench --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

COMMANDS = ("eval", "fuse")


def add_parsers(sub: Any) -> None:
    """Add ``eval`` and ``fuse`` to ``workbench``'s subparsers."""
    from .flags import model_flags, sampling_flags

    e = sub.add_parser(
        "eval", parents=[model_flags(), sampling_flags()],
        help="compare the base model and adapters on a prompt set (replies, tok/s, loss)",
        description="Answer every prompt of a prompt set with the base model and up to four "
                    "adapters or scales, side by side: the replies, decode tokens/s and, "
                    "with a data folder, the validation loss and perplexity computed by "
                    "mlx-lm's own evaluate (perplexity = exp(loss)). --adapter DIR@SCALE "
                    "evaluates an adapter at SCALE times its trained scale. The report is "
                    "Markdown on stdout unless --markdown/--json name new files. "
                    "Example: workbench eval --model ./m --adapter ./adapters/a "
                    "--data ./data --json report.json")
    g = e.add_argument_group("evaluation")
    g.add_argument("--prompts", metavar="FILE",
                   help='a JSONL file of prompts ({"prompt": ...} or {"messages": [...]}, the '
                        "last user turn being the prompt), or a data folder (its "
                        "valid.jsonl); default: the --data folder's valid.jsonl")
    g.add_argument("--data", metavar="DIR",
                   help="a data folder (mlx-lm's format): the validation loss is computed on "
                        "its valid.jsonl")
    g.add_argument("--limit", type=int, metavar="N", help="only the first N prompts")
    g.add_argument("--no-base", action="store_true",
                   help="leave the base model out (compare adapters only)")
    g.add_argument("--val-batches", type=int, default=25, metavar="N",
                   help="validation batches, -1 for all (25, as mlx_lm lora)")
    g.add_argument("--batch-size", type=int, default=4, metavar="N",
                   help="validation batch size (4, as mlx_lm lora)")
    g.add_argument("--max-seq-length", type=int, default=2048, metavar="N",
                   help="longer validation examples are truncated (2048, as mlx_lm lora)")
    g.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=None,
                   help="validation loss of the replies only (--no-mask-prompt: whole "
                        "examples); default: as the adapters were trained")
    g.add_argument("--markdown", metavar="FILE", help="write the report as Markdown to FILE "
                   "(a new file)")
    g.add_argument("--json", metavar="FILE", help="write the report as JSON to FILE (a new "
                   "file)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    f = sub.add_parser(
        "fuse", help="fuse an adapter into its base model (mlx-lm's fuse), into a new folder",
        description="Fuse a LoRA/DoRA adapter into the model's weights with mlx-lm's fuse, "
                    "with progress, into a new (or empty) folder that `workbench models` then "
                    "lists and `workbench --model SAVE_PATH` loads. Nothing is overwritten. "
                    "The flags and defaults are mlx_lm fuse's. "
                    "Example: workbench fuse --model ./m --adapter-path ./adapters/a "
                    "--save-path ./m-fused")
    f.add_argument("--model", default=None,
                   help="the model folder, or a repo id in the Hugging Face cache (mlx_model)")
    f.add_argument("--demo", action="store_true",
                   help="the demo chat model (built offline); --adapter-path may then name "
                        "one of its adapters: pirate or brief")
    f.add_argument("--save-path", default="fused_model",
                   help="the new folder to write the fused model to (fused_model)")
    f.add_argument("--adapter-path", default="adapters",
                   help="the adapter folder: adapter_config.json and adapters.safetensors "
                        "(adapters)")
    f.add_argument("--dequantize", action="store_true",
                   help="write full-precision weights (for a quantized base model)")
    f.add_argument("--export-gguf", action="store_true",
                   help="also export GGUF (mlx-lm: llama, mistral and mixtral, unquantized)")
    f.add_argument("--gguf-path", default="ggml-model-f16.gguf",
                   help="the GGUF file, relative to --save-path (ggml-model-f16.gguf)")
    f.add_argument("--trust-remote-code", action="store_true",
                   help="let the tokenizer or model run code from the model folder")
    f.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int | None:
    """Run the command if it is one of these; None otherwise."""
    command = getattr(args, "command", None)
    if command == "eval":
        return run_eval(args)
    if command == "fuse":
        return run_fuse(args)
    return None


def _fail(message: str, code: int = 1) -> int:
    for line in str(message).splitlines() or [""]:
        print(f"workbench: {line}", file=sys.stderr)
    return code


# -- eval -----------------------------------------------------------------------------------

def split_scale(spec: str) -> tuple[str, float | None]:
    """``DIR@SCALE`` to ``(DIR, SCALE)``; a path that exists as given keeps its ``@``."""
    from common.errors import BadSetting

    if "@" not in spec or Path(spec).expanduser().exists():
        return spec, None
    path, _, scale = spec.rpartition("@")
    try:
        return path, float(scale)
    except ValueError:
        raise BadSetting(f"--adapter {spec}: the part after @ must be a scale (a number from "
                         "0 to 2, times the trained scale)") from None


def find_adapter(path: str, folders: list[Path]) -> str:
    """An adapter folder as given, else by name in the adapters folders."""
    from common.errors import AdapterError

    given = Path(path).expanduser()
    if given.exists():
        return str(given.resolve())
    for folder in folders:
        if (folder / path).is_dir():
            return str((folder / path).resolve())
    raise AdapterError(f"no adapter folder {path}: give the folder that holds "
                       "adapter_config.json and adapters.safetensors")


def candidates_from(specs: list[str], with_base: bool, folders: list[Path]) -> list[Any]:
    from common.errors import BadSetting
    from jobs.evaluate import MAX_CANDIDATES, EvalCandidate

    out = [EvalCandidate("base")] if with_base else []
    for spec in specs:
        path, scale = split_scale(spec)
        folder = find_adapter(path, folders)
        label = Path(folder).name + (f" x{scale:g}" if scale is not None else "")
        taken = {c.label for c in out}
        n, base_label = 2, label
        while label in taken:
            label, n = f"{base_label} #{n}", n + 1
        out.append(EvalCandidate(label, folder, scale))
    if not out:
        raise BadSetting("nothing to evaluate: give --adapter DIR (or leave out --no-base)")
    if len(out) > MAX_CANDIDATES:
        raise BadSetting(f"{len(out)} candidates: compare at most {MAX_CANDIDATES} (the base "
                         "model and four adapters or scales)")
    return out


def run_eval(args: argparse.Namespace) -> int:
    from common.errors import BadSetting
    from engine import EngineError, Notice, follow_sync
    from jobs.evaluate import (
        EvalProgress,
        EvalReply,
        PromptFileError,
        check_new_file,
        evaluate_on_engine,
        load_prompts,
        write_new_file,
    )

    from .runtime import choose_model_on, load_blocking, setup, start_engine

    if args.prompts is None and args.data is None:
        return _fail("eval needs prompts: --prompts FILE (JSONL) or --data DIR (its "
                     "valid.jsonl)", 2)
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be a whole number from 1 up", 2)
    if args.val_batches == 0 or args.val_batches < -1:
        return _fail("--val-batches must be a whole number from 1 up, or -1 for all", 2)
    if args.batch_size < 1 or args.max_seq_length < 2:
        return _fail("--batch-size and --max-seq-length must be whole numbers from 1 up", 2)
    for path in (args.markdown, args.json):
        if path:
            check_new_file(path)  # before the work, not after it
    if args.markdown and args.json and Path(args.markdown).expanduser().absolute() == \
            Path(args.json).expanduser().absolute():
        return _fail("--markdown and --json name the same file: give two files", 2)
    if args.data is not None and not Path(args.data).expanduser().exists():
        return _fail(f"--data {args.data}: no such data folder", 1)
    try:
        prompts = load_prompts(args.prompts if args.prompts is not None else args.data)
    except PromptFileError as exc:
        return _fail(str(exc))
    if args.limit:
        prompts = prompts[: args.limit]
    config, params = setup(args)
    if args.system:
        prompts = [p if p[0]["role"] == "system" else
                   [{"role": "system", "content": args.system}, *p] for p in prompts]
    thinking = getattr(args, "thinking", None)
    template_args = None if thinking is None else {"enable_thinking": thinking == "on"}
    say = (lambda _m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    with start_engine(args, config) as engine:
        choice = choose_model_on(engine, args, config, say)
        folders = [config.adapters_path()]
        if choice.is_demo:  # the kit keeps a model's adapters by its name
            from models.demo import DemoKit

            spec = Path(choice.spec)
            folders.append(DemoKit(spec.parent).adapters(spec.name))
        try:
            cands = candidates_from(list(args.adapter), not args.no_base, folders)
        except BadSetting as exc:
            return _fail(str(exc), 2)
        load_blocking(engine, replace(choice, adapter=None), quiet=args.quiet)
        stream = evaluate_on_engine(engine, cands, prompts, params,
                                    valid_data=args.data, val_batches=args.val_batches,
                                    max_seq_length=args.max_seq_length,
                                    batch_size=args.batch_size, template_args=template_args,
                                    mask_prompt=args.mask_prompt)

        def progress(event: EvalProgress) -> None:
            what = "validation loss" if event.stage == "loss" else "reply"
            say(f"[{event.done}/{event.total}] {event.label}: {what}")

        try:
            report = follow_sync(stream, {
                EvalProgress: progress,
                EvalReply: lambda _e: None,
                Notice: lambda e: say(f"note: {e.message}")},
                on_interrupt=stream.cancel)
        except EngineError as exc:
            return _fail(str(exc), 130 if exc.kind == "cancelled" else 1)
    written = []
    if args.markdown:
        written.append(write_new_file(args.markdown, report.to_markdown()))
    if args.json:
        written.append(write_new_file(args.json, report.to_json()))
    if not written:
        sys.stdout.write(report.to_markdown())
        sys.stdout.flush()
    for path in written:
        say(f"written: {path}")
    if not args.quiet:
        for c in report.candidates:
            loss = report.val_loss.get(c.label)
            ppl = report.perplexity.get(c.label)
            tps = report.mean_decode_tps(c.label)
            parts = [f"{tps:.1f} tok/s" if tps is not None else "no tokens"]
            if loss is not None and ppl is not None:
                parts.append(f"val loss {loss:.4f}, perplexity {ppl:.3f}")
            say(f"{c.label}: {', '.join(parts)}")
    return 0


# -- fuse -----------------------------------------------------------------------------------

def _fuse_inputs(args: argparse.Namespace) -> tuple[str, str]:
    """The model and adapter folders to fuse: the flags', or with ``--demo`` the demo chat
    model and its adapter of that name (``--adapter-path pirate``)."""
    if not args.demo:
        return args.model or "mlx_model", args.adapter_path
    from common.errors import BadSetting
    from models.demo import DemoKit

    from .runtime import demo_model_path

    if args.model:
        raise BadSetting("give --demo or --model, not both")
    model = demo_model_path(None if args.quiet else lambda msg: print(msg, file=sys.stderr))
    folder = DemoKit(model.parent).adapters(model.name)
    named = folder / args.adapter_path
    if named.is_dir() and args.adapter_path == named.name:
        return str(model), str(named)
    if args.adapter_path == "adapters" and not Path("adapters").is_dir():
        names = " or ".join(sorted(p.name for p in folder.iterdir() if p.is_dir()))
        raise BadSetting(f"--demo fuses one of the demo's adapters: add --adapter-path "
                         f"{names} (or a folder of your own)")
    return str(model), args.adapter_path


def run_fuse(args: argparse.Namespace) -> int:
    from common.errors import WorkbenchError
    from jobs.fuse import FuseFailed, FuseFinished, FuseJob, FuseProgress

    from . import recent
    from .models_cli import _ProgressLine

    try:
        model, adapter = _fuse_inputs(args)
    except WorkbenchError as exc:
        return _fail(str(exc), 2)
    line = _ProgressLine(quiet=args.quiet)
    job = FuseJob(model, adapter, args.save_path, dequantize=args.dequantize,
                  export_gguf=args.export_gguf, gguf_path=args.gguf_path,
                  trust_remote_code=args.trust_remote_code)
    try:
        job.start()
    except WorkbenchError as exc:
        return _fail(str(exc))
    final: object = None
    try:
        for event in job.events():
            if isinstance(event, FuseProgress):
                line.show(event.message, force=event.stage != "fuse")
            final = event
    except KeyboardInterrupt:
        job.cancel()
        final = job.wait(30)
    line.end()
    if isinstance(final, FuseFailed):
        return _fail(final.message, 130 if final.kind == "cancelled" else 1)
    if not isinstance(final, FuseFinished):
        return _fail("the fuse ended without a result")
    folder = recent.add_model_folder(final.save_path)
    print(folder)
    if not args.quiet:
        if final.gguf_path:
            print(f"GGUF: {final.gguf_path}", file=sys.stderr)
        print(f"fused in {final.seconds:.1f} s; chat with it: workbench --model {folder}",
              file=sys.stderr)
    return 0
