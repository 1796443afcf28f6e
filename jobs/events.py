"""What a training run reports: small frozen events, sent by the child process as JSON lines
(``to_json``) and read back by ``TrainJob`` (``from_json``), through the jobs' one codec
(``channel.Codec``: versioned, and a line it cannot read raises)."""

from __future__ import annotations

from dataclasses import dataclass

from .channel import Codec


@dataclass(frozen=True, slots=True)
class TrainStarted:
    """The run has its data and model: what it will do."""

    adapter_path: str
    total_iters: int
    train_examples: int
    valid_examples: int
    trainable_parameters: int
    estimate_bytes: int  # the memory estimate checked before starting


@dataclass(frozen=True, slots=True)
class TrainProgress:
    """mlx-lm's training report (every ``steps_per_report`` iterations)."""

    iteration: int
    train_loss: float
    learning_rate: float
    iterations_per_second: float
    tokens_per_second: float
    trained_tokens: int
    peak_memory: int  # bytes
    eta_s: float


@dataclass(frozen=True, slots=True)
class ValProgress:
    """mlx-lm's validation report, with the best so far (the checkpoint kept)."""

    iteration: int
    val_loss: float
    best_iteration: int
    best_val_loss: float


@dataclass(frozen=True, slots=True)
class TrainNotice:
    """One line for people (a checkpoint saved, early stopping, a warning)."""

    message: str


@dataclass(frozen=True, slots=True)
class TrainFinished:
    """The run ended normally (all iterations, or stopped early): the adapter is usable."""

    adapter_path: str
    iterations: int
    best_iteration: int | None
    best_val_loss: float | None
    stopped_early: bool
    seconds: float


@dataclass(frozen=True, slots=True)
class TrainFailed:
    """The run ended without a usable new adapter: one line that says what to do.

    ``kind``: "data", "memory", "cancelled", "crashed", "bad-setting", "model"."""

    message: str
    kind: str


TrainEvent = TrainStarted | TrainProgress | ValProgress | TrainNotice | TrainFinished | TrainFailed
CODEC = Codec("training", 1, TrainStarted, TrainProgress, ValProgress, TrainNotice,
              TrainFinished, TrainFailed)


def to_json(event: TrainEvent) -> str:
    return CODEC.encode(event)


def from_json(line: str) -> TrainEvent:
    """The event on one line of the child's output; ``ProtocolError`` if it is not one."""
    return CODEC.decode(line)  # type: ignore[no-any-return]
