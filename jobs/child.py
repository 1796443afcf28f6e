"""The training process: ``python -m jobs.child SPEC_JSON``.

It runs mlx-lm's own trainer: the setup lines of ``mlx_lm.lora.run`` (seeds, ``load``,
``load_dataset``) and then ``mlx_lm.lora.train_model`` with a ``TrainingCallback``, so the
adapter is bit for bit what ``mlx_lm lora --train`` writes for the same arguments. (``run``
itself drops the callback it is given in mlx-lm 0.32.) The callback turns mlx-lm's reports
into events, keeps the best checkpoint by validation loss (``best/``), and stops the run
early after ``patience`` validations without a new best.

Events go to the original stdout as JSON lines (``channel.event_writer``); everything
mlx-lm and MLX print goes to stderr (fd 1 is pointed there). The run trains into a staging folder;
``training.json`` is written there and the folder is moved into place at the very end
(``folder.Staging``), so a killed run never leaves a half-written adapter folder. The child
stops when its stdin closes (the parent is gone).

``WORKBENCH_TRAIN_FAULT=crash@N|memory@N|kill@N`` makes it fail at the training report of
iteration N (for tests).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .channel import event_writer, out_of_memory
from .events import (
    CODEC,
    TrainEvent,
    TrainFailed,
    TrainFinished,
    TrainNotice,
    TrainProgress,
    TrainStarted,
    ValProgress,
)
from .folder import BEST, MARK, RECORD, Staging, files_of

Emit = Callable[[TrainEvent], None]
FAULT_ENV = "WORKBENCH_TRAIN_FAULT"


class EarlyStop(Exception):
    """Raised from the callback to end mlx-lm's training loop."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _save_weights(model: Any, path: Path) -> None:
    """The trainable parameters, saved as mlx-lm's trainer saves them (through a temporary
    file, so a reader never sees half a file)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")
    mx.save_safetensors(str(tmp), dict(tree_flatten(model.trainable_parameters())))
    os.replace(tmp, path)


class Reporter:
    """mlx-lm's ``TrainingCallback``: events, the record, the best checkpoint, patience."""

    def __init__(self, model: Any, args: Any, spec: dict[str, Any], emit: Emit,
                 wrapped: Any = None) -> None:
        self.model, self.args, self.spec, self.emit, self.wrapped = (
            model, args, spec, emit, wrapped)
        self.adapter_dir = Path(args.adapter_path)
        self.patience: int | None = spec.get("patience")
        self.train_reports: list[dict[str, Any]] = []
        self.val_reports: list[dict[str, Any]] = []
        self.best_iteration: int | None = None
        self.best_loss: float | None = None
        self.since_best = 0
        self.stopped_at: int | None = None
        self.fault = os.environ.get(FAULT_ENV, "")
        self.start: Callable[[Any], None] | None = None  # says TrainStarted

    def started(self) -> None:
        """Say the run has started, once (before its first report)."""
        if self.start is not None:
            start, self.start = self.start, None
            start(self.model)

    # TrainingCallback's two methods (mlx-lm calls them by name).
    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        self.started()
        report: dict[str, Any] = {
            k: int(v) if k in ("iteration", "trained_tokens") else float(v)
            for k, v in info.items()}
        self.train_reports.append(report)
        it = int(report["iteration"])
        speed = report["iterations_per_second"]
        eta = (self.args.iters - it) / speed if speed > 0 else 0.0
        self.emit(TrainProgress(
            iteration=it, train_loss=report["train_loss"],
            learning_rate=report["learning_rate"], iterations_per_second=speed,
            tokens_per_second=report["tokens_per_second"],
            trained_tokens=int(report["trained_tokens"]),
            peak_memory=int(report["peak_memory"] * 1e9), eta_s=round(eta, 1)))
        if self.wrapped is not None:
            self.wrapped.on_train_loss_report(info)
        self._fault(it)

    def on_val_loss_report(self, info: dict[str, Any], final: bool = False) -> None:
        self.started()
        it, loss = int(info["iteration"]), float(info["val_loss"])
        self.val_reports.append({"iteration": it, "val_loss": loss,
                                 "val_time": float(info.get("val_time", 0.0))})
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss, self.best_iteration, self.since_best = loss, it, 0
            _save_weights(self.model, self.adapter_dir / BEST / "adapters.safetensors")
        else:
            self.since_best += 1
        assert self.best_iteration is not None and self.best_loss is not None
        self.emit(ValProgress(iteration=it, val_loss=loss, best_iteration=self.best_iteration,
                              best_val_loss=self.best_loss))
        if self.wrapped is not None and not final:
            self.wrapped.on_val_loss_report(info)
        if (not final and self.patience is not None and self.since_best >= self.patience
                and it < self.args.iters):
            self.stopped_at = it
            self.emit(TrainNotice(
                f"stopping early at iteration {it}: no better validation loss in "
                f"{self.patience} validation{'s' if self.patience > 1 else ''} (best "
                f"{self.best_loss:.3f} at iteration {self.best_iteration})"))
            raise EarlyStop

    def _fault(self, iteration: int) -> None:
        kind, _, at = self.fault.partition("@")
        if not kind or not at.isdigit() or iteration < int(at):
            return
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "memory":
            raise MemoryError(f"[{FAULT_ENV}] out of memory at iteration {iteration}")
        if kind == "crash":
            raise RuntimeError(f"[{FAULT_ENV}] crash at iteration {iteration}")


def _final_validation(reporter: Reporter, model: Any, args: Any, valid_set: Any) -> None:
    """mlx-lm validates before the last step, not after it: measure the last weights too,
    with mlx-lm's own ``evaluate``, so the best checkpoint can be the last one."""
    from mlx_lm.tuner.datasets import CacheDataset
    from mlx_lm.tuner.trainer import evaluate

    tic = time.perf_counter()
    loss = evaluate(model=model, dataset=CacheDataset(valid_set), batch_size=args.batch_size,
                    num_batches=args.val_batches, max_seq_length=args.max_seq_length)
    reporter.on_val_loss_report({"iteration": args.iters, "val_loss": loss,
                                 "val_time": time.perf_counter() - tic}, final=True)


def _hook_trainable_count(lora: Any, emit_started: Callable[[Any], None]) -> None:
    """``train_model`` prints the trainable parameters once the adapters are in place: the
    moment to say the run has started (the count is read from the model itself). Without
    that function, the first report says it instead (``Reporter.started``)."""
    original = getattr(lora, "print_trainable_parameters", None)
    if original is None:
        return

    def hook(model: Any) -> None:
        original(model)
        emit_started(model)

    lora.print_trainable_parameters = hook


def train(spec: dict[str, Any], emit: Emit) -> TrainFinished:
    """The run itself; raises on failure (``main`` turns that into ``TrainFailed``)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # as `mlx_lm lora` sets it
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm import lora
    from mlx_lm.tuner.datasets import load_dataset
    from mlx_lm.utils import load, save_config

    started = time.perf_counter()
    args = types.SimpleNamespace(**spec["args"])
    staging = Staging.from_dict(spec["staging"])
    # mlx_lm.lora.run, line by line.
    np.random.seed(args.seed)
    wrapped = lora.get_reporting_callbacks(args.report_to, project_name=args.project_name,
                                           log_dir=args.adapter_path, config=vars(args))
    model, tokenizer = load(args.model,
                            tokenizer_config={"trust_remote_code": args.trust_remote_code},
                            trust_remote_code=args.trust_remote_code)
    train_set, valid_set, _test_set = load_dataset(args, tokenizer)
    reporter = Reporter(model, args, spec, emit, wrapped)

    def started_event(m: Any) -> None:
        count = sum(v.size for _, v in tree_flatten(m.trainable_parameters()))
        emit(TrainStarted(adapter_path=str(staging.out), total_iters=args.iters,
                          train_examples=len(train_set), valid_examples=len(valid_set),
                          trainable_parameters=int(count),
                          estimate_bytes=int(spec.get("estimate_bytes", 0))))

    reporter.start = started_event
    _hook_trainable_count(lora, lambda _model: reporter.started())
    stopped = "completed"
    try:
        lora.train_model(args, model, train_set, valid_set, reporter)
    except EarlyStop:
        stopped = "early-stopping"
        # mlx-lm's last weights are the ones it stopped with.
        _save_weights(model, Path(args.adapter_path) / "adapters.safetensors")
    if stopped == "completed" and len(valid_set) and (
            not reporter.val_reports or reporter.val_reports[-1]["iteration"] != args.iters):
        _final_validation(reporter, model, args, valid_set)
    mx.synchronize()
    iterations = reporter.stopped_at if reporter.stopped_at is not None else args.iters
    _finish_folder(spec, args, reporter, stopped, iterations, started, save_config)
    finished = TrainFinished(adapter_path=str(staging.out), iterations=iterations,
                             best_iteration=reporter.best_iteration,
                             best_val_loss=reporter.best_loss,
                             stopped_early=stopped == "early-stopping",
                             seconds=round(time.perf_counter() - started, 2))
    _swap(staging, lambda: emit(finished))
    return finished


def _finish_folder(spec: dict[str, Any], args: Any, reporter: Reporter, stopped: str,
                   iterations: int, started: float, save_config: Any) -> None:
    """The record, and the paths of the final folder (not the staging one) in the configs."""
    staging = Staging.from_dict(spec["staging"])
    folder = Path(args.adapter_path)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["adapter_path"] = str(staging.out)
    if spec.get("data_in_folder"):
        config["data"] = str(staging.out / "data")
    save_config(dict(config), config_path)
    if (folder / BEST / "adapters.safetensors").exists():
        best = dict(config, adapter_path=str(staging.out / BEST))
        save_config(best, folder / BEST / "adapter_config.json")
    record = {
        "written_by": MARK,
        "record_version": 1,
        "model": args.model,
        "data": config["data"],
        "adapter_path": str(staging.out),
        "started": spec.get("started"),
        "seconds": round(time.perf_counter() - started, 2),
        "mlx_args": {k: v for k, v in config.items()},
        "workbench": spec.get("workbench", {}),
        "estimate_bytes": spec.get("estimate_bytes"),
        "stopped": stopped,
        "iterations": iterations,
        "best": None if reporter.best_iteration is None else {
            "iteration": reporter.best_iteration, "val_loss": reporter.best_loss,
            "path": BEST},
        "train_losses": reporter.train_reports,
        "val_losses": reporter.val_reports,
    }
    record["files"] = sorted({*files_of(folder), RECORD})
    tmp = folder / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / RECORD)


def _swap(staging: Staging, announce: Callable[[], None]) -> None:
    """Move the finished folder into place; a SIGTERM waits until it is done."""
    pending: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: pending.append(signum))
    try:
        staging.swap()
        announce()
        staging.drop_old()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if pending:
        os._exit(0)  # the run had finished: the parent asked too late to stop it


def _failure(exc: BaseException) -> TrainFailed:
    line = _first_line(exc)
    if out_of_memory(exc):
        return TrainFailed(f"training ran out of memory ({line}): lower --batch-size or "
                           "--max-seq-length, or add --grad-checkpoint", "memory")
    if isinstance(exc, ValueError):
        return TrainFailed(f"mlx-lm refused the run: {line}", "bad-setting")
    if isinstance(exc, OSError):
        return TrainFailed(f"training stopped: {line}", "crashed")
    return TrainFailed(f"training crashed: {type(exc).__name__}: {line} (the adapter folder "
                       "was left as it was)", "crashed")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    emit = event_writer(CODEC)  # mlx-lm, MLX and transformers print to stderr
    try:
        spec = json.loads(argv[0])
        train(spec, emit)
    except KeyboardInterrupt:
        emit(TrainFailed("training cancelled", "cancelled"))
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure becomes one TrainFailed line
        import traceback

        traceback.print_exc()
        emit(_failure(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
