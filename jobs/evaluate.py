"""Compare the base model and a few adapters (or scales) on one prompt set, on the engine thread.

An evaluation answers "did the fine-tune help?" with the numbers mlx-lm itself would give:
the reply to each prompt under each candidate (through the engine's own turn, ``run_turn``,
so at temperature 0 each reply equals a fresh ``mlx_lm.load(model, adapter_path=...)`` run),
its decode rate, and the validation loss of each candidate on a data folder's
``valid.jsonl``, computed by ``mlx_lm.tuner.trainer.evaluate`` over mlx-lm's own datasets
(perplexity = exp(loss), as ``mlx_lm lora --test`` reports it).

Candidates are swapped in through the engine's ``with_adapter_swaps`` request, so every swap
is announced (``AdapterChanged``: ``Engine.adapter`` never goes stale) and the adapter (and
scale) that was active before the evaluation is active again afterwards, announced too, also
after a cancel or an error. The replies use a prompt cache of their own, so the user's cached
conversation is untouched.

This module is the running of an evaluation: ``run_eval`` is a job for
``Engine.with_adapter_swaps`` (``evaluate_on_engine`` wraps that); it emits an ``EvalReply``
and an ``EvalProgress`` per reply and an ``EvalProgress`` per validation pass. What it reads
and gives back live beside it: the prompt file in ``eval_prompts.py``, the candidates, events
and report (with its Markdown/JSON export) in ``eval_report.py``; their names are importable
from here too.
Nothing here imports textual, rich or prompt_toolkit; mlx-lm is imported on the engine thread.
(mlx-lm's ``tuner`` package, needed for the validation loss only, imports rich for its own
console output: that happens only when validation data is given.) A prompt the context
cannot hold gets an empty reply with ``finish_reason`` "context" and a ``Notice``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import BadSetting, ContextOverflow, WorkbenchError
from engine.events import Notice, TurnDone
from engine.sampling import SamplingParams
from jobs.eval_prompts import (
    MAX_PROBLEM_LINES,
    VALID_FILE,
    Messages,
    PromptFileError,
    load_prompts,
    prompt_file,
)
from jobs.eval_report import (
    SCHEMA,
    SCHEMA_VERSION,
    EvalCandidate,
    EvalProgress,
    EvalReply,
    EvalReport,
    ExportExists,
    check_new_file,
    write_new_file,
)

if TYPE_CHECKING:
    from engine.core import EngineCore
    from engine.protocol import AdapterSwap, EngineAPI
    from engine.stream import EventStream

__all__ = [
    "DEFAULT_BATCH_SIZE", "DEFAULT_SEED", "MAX_CANDIDATES", "MAX_PROBLEM_LINES", "SCHEMA",
    "SCHEMA_VERSION", "VALID_FILE", "Emit", "EvalCancelled", "EvalCandidate", "EvalDataError",
    "EvalProgress", "EvalReply", "EvalReport", "ExportExists", "Messages", "PromptFileError",
    "check_candidates", "check_new_file", "evaluate_on_engine", "load_prompts",
    "load_valid_set", "perplexity_of", "prompt_file", "run_eval", "validation_loss",
    "write_new_file",
]

Emit = Callable[[Any], None]

MAX_CANDIDATES = 5  # the base and up to four adapters or scales
DEFAULT_BATCH_SIZE = 4  # mlx_lm lora's --batch-size default
DEFAULT_SEED = 0  # mlx_lm lora's --seed default (it picks which batches are evaluated)


# -- errors ---------------------------------------------------------------------------------

class EvalDataError(WorkbenchError):
    """The validation data cannot be used (missing, empty, in an unknown format)."""

    kind = "data"


class EvalCancelled(WorkbenchError):
    kind = "cancelled"


# -- validation data ------------------------------------------------------------------------

def trained_mask_prompt(candidates: Sequence[EvalCandidate], emit: Emit) -> bool:
    """The rule the adapters among ``candidates`` were trained with (mlx-lm's trainer writes
    ``mask_prompt`` into ``adapter_config.json``), so the loss here is the one training
    reported (issue 19 #11). Adapters that disagree: the first one's, with a notice."""
    rules: dict[str, bool] = {}
    for cand in candidates:
        if cand.adapter is None:
            continue
        try:
            config = json.loads((Path(cand.adapter) / "adapter_config.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            rules[cand.label] = bool(config.get("mask_prompt", False))
    chosen = next(iter(rules.values()), False)
    if len(set(rules.values())) > 1:
        emit(Notice(f"the adapters were trained with different prompt masking: every "
                    f"validation loss here {'masks' if chosen else 'includes'} the prompt, as "
                    f"{next(iter(rules))} was trained (--mask-prompt/--no-mask-prompt "
                    "chooses)"))
    return chosen


def load_valid_set(valid_data: str | Path, tokenizer: Any, mask_prompt: bool = False) -> Any:
    """mlx-lm's dataset for ``valid_data``: a data folder's ``valid.jsonl`` or one JSONL
    file, made by mlx-lm's ``create_dataset`` (what ``load_local_dataset`` does for the
    validation split, without reading the training split). Never the Hub. ``mask_prompt``:
    the loss of the replies only, as a run trained with ``--mask-prompt`` measures it."""
    from types import SimpleNamespace

    from mlx_lm.tuner.datasets import create_dataset

    path = Path(valid_data).expanduser()
    if path.is_dir():
        if not (path / VALID_FILE).is_file():
            raise EvalDataError(f"{path} has no {VALID_FILE}: the validation loss needs a "
                                "data folder with a validation set")
        path = path / VALID_FILE
    elif not path.is_file():
        raise EvalDataError(f"{path}: no such data folder or file")
    config = SimpleNamespace(mask_prompt=mask_prompt)
    try:
        with path.open(encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        if not records:
            raise EvalDataError(f"{path}: the validation set is empty")
        return create_dataset(records, tokenizer, config)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalDataError(f"{path}: cannot be read as mlx-lm training data ({first})") \
            from None


def validation_loss(model: Any, valid: Any, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    num_batches: int = 25, max_seq_length: int = 2048,
                    seed: int = DEFAULT_SEED, cancel: threading.Event | None = None,
                    warn: Callable[[str], None] | None = None) -> float:
    """mlx-lm's ``evaluate`` over ``valid`` (a dataset from ``load_valid_set``), with the
    model as it is now (its active adapter included). The batch size is capped at the
    number of examples (mlx-lm refuses fewer examples than one batch); numpy is seeded first,
    because mlx-lm's batch order (and, with ``num_batches`` limited, which batches) comes
    from it. mlx-lm prints its warnings (sequences truncated to ``max_seq_length``) on
    stdout, which belongs to the caller: they go to ``warn`` instead, once each."""
    import contextlib
    import io

    import numpy as np
    from mlx_lm.tuner.datasets import CacheDataset
    from mlx_lm.tuner.trainer import evaluate

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise EvalCancelled("evaluation cancelled")

    printed = io.StringIO()
    np.random.seed(seed)
    try:
        with contextlib.redirect_stdout(printed):
            return float(evaluate(
                model=model,
                dataset=CacheDataset(valid),
                batch_size=max(1, min(batch_size, len(valid))),
                num_batches=num_batches,
                max_seq_length=max_seq_length,
                progress_callback=check,
            ))
    finally:
        if warn is not None:
            for line in dict.fromkeys(printed.getvalue().splitlines()):
                if line.strip():
                    warn(line.replace("[WARNING] ", "").strip())


def perplexity_of(loss: float | None) -> float | None:
    if loss is None:
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


# -- the job --------------------------------------------------------------------------------

def check_candidates(candidates: Sequence[EvalCandidate]) -> None:
    if not candidates:
        raise BadSetting("nothing to evaluate: give the base model or at least one adapter")
    if len(candidates) > MAX_CANDIDATES:
        raise BadSetting(f"{len(candidates)} candidates: compare at most {MAX_CANDIDATES} "
                         "(the base model and four adapters or scales)")
    labels = [c.label for c in candidates]
    dup = next((lab for lab in labels if labels.count(lab) > 1), None)
    if dup is not None:
        raise BadSetting(f"two candidates are labelled {dup!r}: give each its own label")


def run_eval(core: EngineCore, swap: AdapterSwap, candidates: Sequence[EvalCandidate],
             prompts: Sequence[Messages], params: SamplingParams, emit: Emit,
             cancel: threading.Event, *,
             valid_data: str | None = None, val_batches: int = 25,
             max_seq_length: int = 2048, batch_size: int = DEFAULT_BATCH_SIZE,
             seed: int = DEFAULT_SEED,
             template_args: dict[str, Any] | None = None,
             mask_prompt: bool | None = None) -> EvalReport:
    """Answer every prompt with every candidate, then (with ``valid_data``) compute each
    candidate's validation loss. Runs on the engine thread, in ``with_adapter_swaps``:
    ``swap`` activates each candidate (announced), and the engine puts the adapter active
    before back in every case. Raises ``EvalCancelled`` when ``cancel`` is set,
    ``WorkbenchError`` for a bad adapter or data. ``template_args`` go to the chat template (e.g.
    ``{"enable_thinking": False}``); ``batch_size`` and ``seed`` are mlx_lm lora's.
    ``mask_prompt`` None: the validation loss masks the prompt when the adapters were trained
    that way (``trained_mask_prompt``); the report says which rule it used."""
    from engine.prompt_cache import PromptCaches
    from engine.turn import run_turn

    started = time.perf_counter()
    loaded = core.require()
    candidates = list(candidates)
    check_candidates(candidates)
    conversations = [[dict(m) for m in p] for p in prompts]
    if not conversations:
        raise BadSetting("no prompts to evaluate")
    # Read the data before any swap: a bad folder fails at once.
    mask = trained_mask_prompt(candidates, emit) if mask_prompt is None else mask_prompt
    valid = load_valid_set(valid_data, loaded.tokenizer, mask) if valid_data is not None \
        else None
    steps = len(candidates) * len(conversations) + (len(candidates) if valid is not None
                                                    else 0)
    turn_args: dict[str, Any] = {}
    if template_args:
        from engine.sampling import TurnOptions

        turn_args["options"] = TurnOptions(template_args=dict(template_args))
    done = 0
    # A cache of its own: the user's cached conversation stays as it is.
    caches = PromptCaches(1)
    caches.model = loaded.model
    replies: list[EvalReply] = []
    losses: dict[str, float | None] = {c.label: None for c in candidates}
    try:
        for cand in candidates:
            _activate(swap, cand)
            caches.clear()
            key = core.cache_key
            for i, messages in enumerate(conversations):
                if cancel.is_set():
                    raise EvalCancelled("evaluation cancelled")
                final: TurnDone | None = None
                try:
                    for event in run_turn(loaded, caches, key, messages, params,
                                          cancel=cancel, limit=core.context_limit(),
                                          prefill_step=core.prefill_step, **turn_args):
                        if isinstance(event, TurnDone):
                            final = event
                        elif isinstance(event, Notice):
                            emit(Notice(f"{cand.label}, prompt {i + 1}: {event.message}"))
                except ContextOverflow as exc:  # this prompt has no reply; the others do
                    emit(Notice(f"{cand.label}, prompt {i + 1}: {exc}"))
                    tokens = exc.details.get("prompt_tokens")
                    reply = EvalReply(i, cand.label, "", 0, 0.0, "context",
                                      tokens if isinstance(tokens, int) else 0)
                else:
                    assert final is not None
                    if cancel.is_set() or final.stats.finish_reason == "cancelled":
                        raise EvalCancelled("evaluation cancelled")
                    reply = EvalReply(i, cand.label, final.text, final.stats.generated_tokens,
                                      final.stats.decode_tps, final.stats.finish_reason,
                                      final.stats.prompt_tokens)
                replies.append(reply)
                done += 1
                emit(reply)
                emit(EvalProgress(done, steps, cand.label))
            if valid is not None:
                label = cand.label

                def warn(text: str) -> None:
                    emit(Notice(f"{label}: {text}"))  # noqa: B023 - used within the loop

                losses[label] = validation_loss(
                    loaded.model, valid, batch_size=batch_size, num_batches=val_batches,
                    max_seq_length=max_seq_length, seed=seed, cancel=cancel, warn=warn)
                done += 1
                emit(EvalProgress(done, steps, cand.label, "loss"))
    finally:
        caches.clear()
    prompt_texts = [m[-1]["content"] for m in conversations]
    return EvalReport(
        model=loaded.info.name,
        candidates=candidates,
        prompts=prompt_texts,
        replies=replies,
        val_loss=losses,
        perplexity={k: perplexity_of(v) for k, v in losses.items()},
        conversations=conversations,
        valid_data=str(valid_data) if valid_data is not None else None,
        val_batches=val_batches if valid is not None else 0,
        mask_prompt=mask if valid is not None else False,
        params={k: v for k, v in asdict(params).items() if v is not None},
        seconds=round(time.perf_counter() - started, 3),
    )


def _activate(swap: AdapterSwap, cand: EvalCandidate) -> None:
    try:
        swap(cand.adapter, cand.scale if cand.adapter is not None else None)
    except WorkbenchError as exc:
        raise type(exc)(f"{cand.label}: {exc}", **exc.details) from None


def evaluate_on_engine(engine: EngineAPI, candidates: Sequence[EvalCandidate],
                       prompts: Sequence[Messages], params: SamplingParams | None = None, *,
                       valid_data: str | None = None, val_batches: int = 25,
                       max_seq_length: int = 2048, batch_size: int = DEFAULT_BATCH_SIZE,
                       seed: int = DEFAULT_SEED, template_args: dict[str, Any] | None = None,
                       mask_prompt: bool | None = None) -> EventStream[EvalReport]:
    """``run_eval`` as an engine request (``with_adapter_swaps``): events ``EvalReply``,
    ``EvalProgress`` and ``Notice``, then ``Result(EvalReport)`` (or ``Error``: kind
    "cancelled", "adapter", "data", "bad-setting", "no-model"). Cancel with
    ``stream.cancel()``."""
    cands = list(candidates)
    convs = [[dict(m) for m in p] for p in prompts]
    sampling = params or SamplingParams(temperature=0.0)

    def job(core: EngineCore, swap: AdapterSwap, emit: Emit, cancel: threading.Event
            ) -> EvalReport:
        return run_eval(core, swap, cands, convs, sampling, emit, cancel, valid_data=valid_data,
                        val_batches=val_batches, max_seq_length=max_seq_length,
                        batch_size=batch_size, seed=seed, template_args=template_args,
                        mask_prompt=mask_prompt)

    return engine.with_adapter_swaps(job)
