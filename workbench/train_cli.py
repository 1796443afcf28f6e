"""``workbench train``: train a LoRA/DoRA (or full) adapter with mlx-lm's own trainer, from
a data folder or from saved sessions.

The flags are ``mlx_lm lora``'s, with its names and defaults, and the same precedence
(flags over the ``-c`` file over mlx-lm's defaults; a ``--preset`` sits under the file).
Progress goes to stderr, one line per report (iteration, losses, it/s, tok/s, peak memory,
learning rate, ETA); ``--jsonl`` prints the events as JSON lines on stdout instead. The
adapter folder's path is the one line printed on stdout at the end. Ctrl-C cancels the run
and leaves the adapter folder as it was.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

COMMAND = "train"

EXAMPLES = """\
examples:
  workbench train --demo                      # the demo chat model on the demo data (quick)
  workbench train --model ./my-model --data ./data --adapter-path ./adapters/mine
  workbench train --model ./my-model --sessions chat-1 chat-2 --only-good --iters 200
  workbench train -c lora.yaml --patience 3   # mlx-lm's YAML config, early stopping

data: a folder with train.jsonl (and valid.jsonl) in one of mlx-lm's formats, one JSON
object per line: {"messages": [...]} (chat), {"prompt": ..., "completion": ...} or
{"text": ...}. Every bad record is reported (file:line: what is wrong) before training.
The adapter folder gets mlx-lm's adapters.safetensors (the last weights), best/ (the best
by validation loss, itself an adapter folder) and training.json (every loss reported).
"""


def add_parsers(sub: Any) -> None:
    from jobs.config import FINE_TUNE_TYPES, OPTIMIZERS, PRESETS

    t = sub.add_parser(
        COMMAND,
        help="train an adapter with mlx-lm's trainer (data folder or sessions)",
        description="Train a LoRA, DoRA or full fine-tune with mlx-lm's own trainer, in a "
        "child process, with the flags of `mlx_lm lora` (same names and "
        "defaults). The run is checked first (data, adapter folder, memory); the "
        "best checkpoint by validation loss is kept beside the last.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = t.add_argument_group("model and data")
    src.add_argument(
        "--model", "-m", metavar="MODEL", help="a model folder or Hugging Face repo id"
    )
    src.add_argument(
        "--demo",
        action="store_true",
        help="the demo chat model, with the demo data and --preset quick unless "
        "given (no download; under a minute on a laptop CPU)",
    )
    src.add_argument(
        "--data", metavar="DIR", help="a folder with train.jsonl and valid.jsonl (mlx-lm formats)"
    )
    src.add_argument(
        "--sessions",
        nargs="+",
        metavar="NAME",
        dest="train_sessions",
        help="train on these saved sessions instead (`workbench sessions list`)",
    )
    src.add_argument(
        "--sessions-dir", metavar="DIR", help="where sessions are kept (default: the config's)"
    )
    src.add_argument(
        "--only-good",
        action="store_true",
        default=None,
        help="with --sessions: only replies marked good or edited",
    )
    src.add_argument(
        "--valid-share",
        type=float,
        default=None,
        metavar="F",
        help="with --sessions: the share held out for validation (0.1)",
    )
    src.add_argument(
        "--adapter-path",
        metavar="OUT",
        help="the adapter folder to write: new, empty, or "
        "one an earlier `workbench train` wrote "
        "(default: adapters)",
    )

    m = t.add_argument_group("mlx-lm lora options (defaults: mlx-lm's)")
    m.add_argument("-c", "--config", metavar="FILE", help="a YAML file of mlx-lm lora options")
    m.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="a named starting point under -c and the flags (quick: the demo's; "
        "default: mlx-lm's; thorough: long, with early stopping)",
    )
    m.add_argument("--fine-tune-type", choices=FINE_TUNE_TYPES, help="lora (default), dora or full")
    m.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default)")
    m.add_argument(
        "--mask-prompt",
        action="store_true",
        default=None,
        help="train on the replies only (not the prompts)",
    )
    m.add_argument(
        "--num-layers",
        type=int,
        metavar="N",
        help="layers to fine-tune, from the last (16; -1: all)",
    )
    m.add_argument("--batch-size", type=int, metavar="N", help="minibatch size (4)")
    m.add_argument("--iters", type=int, metavar="N", help="iterations to train for (1000)")
    m.add_argument(
        "--val-batches",
        type=int,
        metavar="N",
        help="validation batches (25; -1: the whole validation set)",
    )
    m.add_argument("--learning-rate", type=float, metavar="LR", help="learning rate (1e-5)")
    m.add_argument(
        "--steps-per-report", type=int, metavar="N", help="iterations between loss reports (10)"
    )
    m.add_argument(
        "--steps-per-eval", type=int, metavar="N", help="iterations between validations (200)"
    )
    m.add_argument(
        "--grad-accumulation-steps",
        type=int,
        metavar="N",
        help="steps whose gradients add up before an update (1)",
    )
    m.add_argument("--resume-adapter-file", metavar="FILE", help="start from these adapter weights")
    m.add_argument(
        "--save-every", type=int, metavar="N", help="save a checkpoint every N iterations (100)"
    )
    m.add_argument(
        "--max-seq-length", type=int, metavar="N", help="longest example in tokens (2048)"
    )
    m.add_argument(
        "--grad-checkpoint",
        action="store_true",
        default=None,
        help="gradient checkpointing: less memory, slower",
    )
    m.add_argument("--seed", type=int, metavar="N", help="the random seed (0)")
    m.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="let the tokenizer run code shipped with the model",
    )

    w = t.add_argument_group("workbench")
    w.add_argument(
        "--patience",
        type=int,
        metavar="N",
        help="stop after N validations without a better validation loss",
    )
    w.add_argument("--jsonl", action="store_true", help="print the events as JSON lines on stdout")
    w.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")


_MLX_FLAGS = (
    "fine_tune_type",
    "optimizer",
    "mask_prompt",
    "num_layers",
    "batch_size",
    "iters",
    "val_batches",
    "learning_rate",
    "steps_per_report",
    "steps_per_eval",
    "grad_accumulation_steps",
    "resume_adapter_file",
    "save_every",
    "max_seq_length",
    "grad_checkpoint",
    "seed",
    "trust_remote_code",
    "config",
    "patience",
    "only_good",
    "valid_share",
)


def build_config(args: argparse.Namespace) -> Any:
    """The ``TrainConfig`` for these flags (precedence as in mlx-lm)."""
    from common.errors import BadSetting
    from jobs.config import TrainConfig

    from .config import load_config

    values: dict[str, Any] = {k: getattr(args, k, None) for k in _MLX_FLAGS}
    preset = args.preset
    if args.demo:
        from models.demo import DemoKit

        from .runtime import demo_model_path

        if args.model:
            raise BadSetting("give --demo or --model, not both")
        path = demo_model_path(lambda msg: print(msg, file=sys.stderr))
        values["model"] = str(path)
        if not args.data and not args.train_sessions:
            values["data"] = str(DemoKit(path.parent).train_data)
        preset = preset or "quick"
    else:
        values["model"] = args.model
        values["data"] = args.data
    values["adapter_path"] = args.adapter_path
    if args.train_sessions:
        values["sessions"] = list(args.train_sessions)
        values["sessions_dir"] = args.sessions_dir or str(load_config().sessions_path())
    config = TrainConfig.from_args(values, preset=preset)
    if not config.model:
        raise BadSetting("no model given: pass --model (a model folder or repo id) or --demo")
    return config


def run(args: argparse.Namespace) -> int | None:
    if getattr(args, "command", None) != COMMAND:
        return None
    return run_train(args)


def _fail(message: str, code: int = 1) -> int:
    print(f"workbench: {message}", file=sys.stderr)
    return code


def run_train(args: argparse.Namespace) -> int:
    from common.errors import BadSetting, WorkbenchError
    from jobs.data import TrainDataError
    from jobs.events import TrainFailed, TrainFinished, to_json
    from jobs.runner import TrainJob

    try:
        config = build_config(args)
        job = TrainJob(config)
        job.start()
    except TrainDataError as exc:
        for line in exc.problems:
            print(f"workbench: {line}", file=sys.stderr)
        return _fail(
            f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} in "
            "the training data: fix them and start again (nothing was trained)"
            if exc.problems
            else str(exc)
        )
    except BadSetting as exc:
        return _fail(str(exc), 2)
    except WorkbenchError as exc:
        return _fail(str(exc))
    show = _Progress(job, quiet=args.quiet or args.jsonl)
    show.begin()
    final: Any = None
    try:
        while final is None:
            try:
                for event in job.events():
                    if args.jsonl:
                        print(to_json(event), flush=True)
                    show.event(event)
                    if isinstance(event, TrainFinished | TrainFailed):
                        final = event
            except KeyboardInterrupt:
                print("workbench: cancelling the training run...", file=sys.stderr)
                job.cancel()
    finally:
        if final is None:
            job.cancel()
    if isinstance(final, TrainFailed):
        for line in job.log_tail()[-12:] if final.kind == "crashed" and not args.quiet else []:
            print(f"  | {line}", file=sys.stderr)
        return _fail(final.message, 130 if final.kind == "cancelled" else 1)
    if not args.jsonl:
        print(final.adapter_path)
    return 0


class _Progress:
    """One line per report on stderr: what mlx-lm prints, plus speed, memory, lr and ETA."""

    def __init__(self, job: Any, quiet: bool) -> None:
        self.job, self.quiet = job, quiet
        self.total = 0
        self.last_val: str = ""

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def begin(self) -> None:
        from common.formats import fmt_count, gb

        job = self.job
        if job.data is None or job.estimate is None:
            return
        d, e = job.data, job.estimate
        self.say(
            f"training {e.name} ({e.fine_tune_type}) on {d.train} {d.format} examples "
            f"({d.valid} to validate), into {job.adapter_path}; "
            f"{fmt_count(e.trainable_parameters)} trainable parameters, about "
            f"{gb(e.need)} of memory"
        )

    def event(self, event: Any) -> None:
        from common.formats import gb
        from jobs import events as ev

        if isinstance(event, ev.TrainStarted):
            self.total = event.total_iters
            self.say(
                f"started: {event.total_iters} iterations, {event.train_examples} "
                f"training and {event.valid_examples} validation examples"
            )
        elif isinstance(event, ev.TrainProgress):
            self.say(
                f"iter {event.iteration:>5}/{self.total}  train loss "
                f"{event.train_loss:7.3f}  {event.iterations_per_second:6.2f} it/s  "
                f"{event.tokens_per_second:7.0f} tok/s  peak {gb(event.peak_memory)}  "
                f"lr {event.learning_rate:.1e}  ETA {_duration(event.eta_s)}"
            )
        elif isinstance(event, ev.ValProgress):
            self.say(
                f"iter {event.iteration:>5}/{self.total}  val loss   "
                f"{event.val_loss:7.3f}  (best {event.best_val_loss:.3f} at iteration "
                f"{event.best_iteration})"
            )
        elif isinstance(event, ev.TrainNotice):
            self.say(f"workbench: {event.message}")
        elif isinstance(event, ev.TrainFinished):
            how = "stopped early after" if event.stopped_early else "trained"
            best = (
                f"; best validation loss {event.best_val_loss:.3f} at iteration "
                f"{event.best_iteration} (in {event.adapter_path}/best)"
                if event.best_iteration is not None
                else ""
            )
            self.say(
                f"{how} {event.iterations} iterations in {_duration(event.seconds)}{best}"
                f"; the last weights are in {event.adapter_path}"
            )


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
