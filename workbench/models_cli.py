"""``workbench models``, ``workbench download`` and ``workbench quantize``: getting models
from a terminal or a script.

Progress goes to stderr (one rewritten line on a terminal, a line every few seconds in a
pipe); the one result a script wants (a folder path, or JSON) goes to stdout. Every failure is
one line on stderr and a non-zero exit. Imports stay inside the commands so that
``workbench --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

COMMANDS = ("models", "download", "quantize")
PIPE_PROGRESS_INTERVAL_S = 2.0


def add_parsers(sub: Any) -> None:
    """Add the three commands to ``workbench``'s subparsers."""
    m = sub.add_parser(
        "models", help="list the models on this machine and whether they fit in memory",
        description="Models in the Hugging Face cache and in your model folders that mlx-lm "
                    "can load, recently used first, with size, bits per weight, parameters, "
                    "context length and whether each fits in memory now. "
                    "Example: workbench models qwen 4bit")
    m.add_argument("filter", nargs="*", help="only models matching all these words")
    m.add_argument("--json", action="store_true", help="print a JSON list")
    m.add_argument("--all", action="store_true",
                   help="also list models mlx-lm cannot load, with the reason")
    m.add_argument("--folder", action="append", default=[], metavar="DIR",
                   help="also look in DIR this time")
    m.add_argument("--add-folder", metavar="DIR", help="look in DIR from now on")
    m.add_argument("--remove-folder", metavar="DIR", help="stop looking in DIR")
    m.add_argument("--context", type=int, default=4096, metavar="N",
                   help="context tokens counted in the memory estimate (4096)")

    d = sub.add_parser(
        "download", help="download a model from the Hugging Face Hub (resumable)",
        description="Download a model repo into the standard Hugging Face cache, with "
                    "progress. Ctrl-C stops it; the same command later continues where it "
                    "stopped. Prints the model folder. "
                    "Example: workbench download mlx-community/Qwen3-0.6B-4bit")
    d.add_argument("repo", help="a Hugging Face repo id (owner/name)")
    d.add_argument("--revision", default="main", help="branch, tag or commit (main)")
    d.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")

    q = sub.add_parser(
        "quantize", help="quantize a model to 4 or 8 bits (mlx-lm)",
        description="Write a quantized copy of a model folder or cached repo with mlx-lm, "
                    "into a new folder that `workbench models` then lists. "
                    "Example: workbench quantize ./my-model ./my-model-4bit --bits 4")
    q.add_argument("src", help="a model folder or a repo id already in the Hugging Face cache")
    q.add_argument("dst", help="the new folder to write (must not exist)")
    q.add_argument("--bits", type=int, choices=(4, 8), required=True, help="4 or 8")
    q.add_argument("--group-size", type=int, choices=(32, 64, 128), default=64,
                   help="weights sharing one scale (64)")
    q.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int | None:
    """Run the command if it is one of these; None otherwise."""
    command = getattr(args, "command", None)
    if command == "models":
        return run_models(args)
    if command == "download":
        return run_download(args)
    if command == "quantize":
        return run_quantize(args)
    return None


def _fail(message: str, code: int = 1) -> int:
    print(f"workbench: {message}", file=sys.stderr)
    return code


class _ProgressLine:
    """One rewritten line on a terminal; in a pipe, a line every few seconds."""

    def __init__(self, out: TextIO | None = None, quiet: bool = False) -> None:
        self.out = out or sys.stderr
        self.quiet = quiet
        self.tty = self.out.isatty()
        self.last = 0.0
        self.width = 0
        self.printed = ""

    def show(self, text: str, force: bool = False) -> None:
        if self.quiet:
            return
        if self.tty:
            pad = max(0, self.width - len(text))
            self.width = len(text)
            self.out.write("\r" + text + " " * pad)
            self.out.flush()
            return
        now = time.monotonic()
        if force or now - self.last >= PIPE_PROGRESS_INTERVAL_S:
            self.last = now
            self.printed = text
            print(text, file=self.out, flush=True)

    def end(self, text: str | None = None) -> None:
        """Leave the terminal line clean, then print ``text`` (once) if given."""
        if self.quiet:
            return
        if self.tty and self.width:
            self.out.write("\r" + " " * self.width + "\r")
            self.width = 0
        if text and (self.tty or text != self.printed):
            print(text, file=self.out, flush=True)


# -- models --------------------------------------------------------------------------------

def free_memory_now() -> int:
    """What a model load can count on now, read on the engine's thread (MLX is asked there
    only, as the app does); the system's free memory if the engine cannot answer."""
    from engine import Engine, Result
    from models.fit import system_available_memory

    try:
        with Engine() as engine:
            final = engine.memory().wait(30)
    except Exception:  # noqa: BLE001 - a best-effort figure; the OS's is good enough
        return system_available_memory()
    if isinstance(final, Result) and final.value.load_available > 0:
        return int(final.value.load_available)
    return system_available_memory()


def run_models(args: argparse.Namespace) -> int:
    from pathlib import Path

    from common.formats import gb
    from models.catalog import filter_models, partial_downloads, scan_models

    from . import recent
    from .config import load_config

    for given in args.folder:
        folder = Path(given).expanduser()
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.exists() else "does not exist"
            return _fail(f"--folder {given} {what}: give a folder that holds model folders")
    if args.add_folder:
        folder = recent.add_model_folder(args.add_folder)
        if not folder.is_dir():
            print(f"workbench: note: {folder} does not exist yet", file=sys.stderr)
        print(f"workbench: looking for models in {folder} from now on", file=sys.stderr)
    if args.remove_folder and not recent.remove_model_folder(args.remove_folder):
        return _fail(f"{args.remove_folder} is not in the list of model folders "
                     "(`workbench models` prints them)")
    memory = recent.load()
    for problem in memory.problems:
        print(f"workbench: {problem}", file=sys.stderr)
    folders = [*recent.model_folders(), *args.folder]
    available = free_memory_now()
    entries = scan_models(folders, recent=[r.spec for r in memory.recent],
                          context_tokens=max(1, args.context), available=available,
                          include_unsupported=args.all)
    if args.filter:
        entries = filter_models(entries, " ".join(args.filter))
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    if entries:
        print(format_table(entries))
    elif args.filter:
        print(f"no model matches {' '.join(args.filter)!r}", file=sys.stderr)
    else:
        recommended = load_config().recommended_model
        print("no models yet: download one with `workbench download "
              f"{recommended}` (recommended), or try `workbench --demo`", file=sys.stderr)
    for part in partial_downloads():
        print(f"unfinished download: {part.repo_id} ({gb(part.bytes_on_disk)} so far): "
              f"`workbench download {part.repo_id}` continues it", file=sys.stderr)
    print(f"{gb(available)} of memory free now; looked in the Hugging Face cache and "
          f"{', '.join(str(f) for f in folders)}", file=sys.stderr)
    return 0


RECENT_MARK = "*"


def _where(entry: Any) -> str:
    """Where a model is: the cache for a cached repo (its name is the repo id), else its
    folder, with ``~`` for the home folder."""
    from pathlib import Path

    if entry.source == "hf-cache":
        return "hf-cache"
    path = str(entry.path)
    home = str(Path.home())
    return "~" + path[len(home):] if path == home or path.startswith(home + "/") else path


def format_table(entries: list[Any]) -> str:
    from common.formats import gb

    fit_words = {"fits": "yes", "tight": "tight", "too-big": "NO", "?": "?"}
    rows = [("", "MODEL", "PARAMS", "BITS", "SIZE", "CONTEXT", "FITS", "WHERE")]
    for e in entries:
        where = _where(e)
        rows.append((
            RECENT_MARK if e.recent_rank is not None else "",
            e.name + (" (demo)" if e.is_demo else ""),
            e.params_label,
            f"{e.bits_per_weight:.1f}" if e.bits_per_weight else "?",
            gb(e.size_on_disk),
            str(e.context_length or "?"),
            fit_words.get(e.fit, e.fit) if e.supported else "-",
            where if e.supported else f"{where}: cannot load: {e.problem}",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i in (0, 1) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=False))]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    if any(e.recent_rank is not None for e in entries):
        lines.append(f"{RECENT_MARK} used recently (listed first, the latest at the top); "
                     "FITS: whether it fits in the memory free now")
    return "\n".join(lines)


# -- download ------------------------------------------------------------------------------

def run_download(args: argparse.Namespace) -> int:
    from common.errors import WorkbenchError
    from common.formats import fmt_bytes
    from models.hub import DownloadProgress, fetch_model, partial_bytes

    line = _ProgressLine(quiet=args.quiet)
    last: list[DownloadProgress] = []

    def progress(p: DownloadProgress) -> None:
        last[:] = [p]
        line.show(p.line(), force=p.stage in ("listing", "done", "cached"))

    try:
        path = fetch_model(args.repo, revision=args.revision, progress=progress)
    except KeyboardInterrupt:
        kept = partial_bytes(args.repo) if "/" in args.repo else 0
        total = last[0].total if last else 0
        got = last[0].done if last else kept
        line.end()
        of = f" of {fmt_bytes(total)}" if total else ""
        return _fail(f"download of {args.repo} stopped with {fmt_bytes(got)}{of} kept: run "
                     f"`workbench download {args.repo}` again to continue", 130)
    except WorkbenchError as exc:
        line.end()
        return _fail(str(exc))
    line.end(last[0].line() if last else None)
    print(path)
    if not args.quiet:
        print(f"chat with it: workbench --model {args.repo}", file=sys.stderr)
    return 0


# -- quantize ------------------------------------------------------------------------------

def run_quantize(args: argparse.Namespace) -> int:
    from engine import Engine, Error, Result
    from models.quantize import QuantizeProgress, quantize_job

    from . import recent

    line = _ProgressLine(quiet=args.quiet)
    engine = Engine()
    final: Any = None
    try:
        stream = engine.submit(quantize_job(args.src, args.dst, args.bits, args.group_size))
        try:
            for event in stream:
                if isinstance(event, QuantizeProgress):
                    line.show(event.message, force=event.stage != "quantize")
                final = event
        except KeyboardInterrupt:
            engine.cancel()
            final = stream.wait()
    finally:
        engine.close()
    line.end()
    if isinstance(final, Error):
        return _fail(final.message, 130 if final.kind == "cancelled" else 1)
    if not isinstance(final, Result):
        return _fail("quantize ended without a result")
    folder = recent.add_model_folder(final.value)
    print(folder)
    if not args.quiet:
        print(f"written; chat with it: workbench --model {folder}", file=sys.stderr)
    return 0
