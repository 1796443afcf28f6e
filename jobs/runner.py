"""``TrainJob``: one training run in a child process, seen as a stream of events.

``start`` does everything that can refuse a run before any process starts: the model
folder, the adapter folder (never one holding files the workbench did not write), the data
(every bad record, one line each), the memory estimate. Then it starts
``python -m jobs.child`` through the jobs' one channel (``channel.ChildJob``: its events in
``stream``, or ``poll`` (non-blocking) and ``events`` (blocking); one cancel policy, one
out-of-memory rule). The last event is
always one ``TrainFinished`` or ``TrainFailed``, sent once the adapter folder is in its final
state: a cancelled, crashed or killed run leaves it as it was. No MLX runs in this process:
any thread may use a ``TrainJob``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import BadSetting, WorkbenchError

from . import data as train_data
from . import estimate as est
from .channel import ChildJob, Ended
from .config import TrainConfig
from .events import CODEC, TrainFailed, TrainFinished, TrainNotice
from .folder import DATA, Staging, check_target, recover
from .resume import check_resume_file


class TrainJob(ChildJob[TrainFinished | TrainFailed]):
    """One run of mlx-lm's trainer for ``config``, in a child process (``channel.ChildJob``:
    ``stream``, ``poll``/``events``/``wait``, ``cancel``, ``log_tail``)."""

    codec = CODEC
    finals = (TrainFinished, TrainFailed)
    what = "the training process"

    def __init__(self, config: TrainConfig, *, python: str = sys.executable) -> None:
        super().__init__(python)
        self.config = config
        self._staging: Staging | None = None
        self.adapter_path: Path | None = None
        self.estimate: est.TrainEstimate | None = None
        self.data: train_data.DataSummary | None = None

    def start(self) -> None:
        """Check everything, then start the child. Raises a one-line ``WorkbenchError`` when
        the run is refused (nothing is written then)."""
        if self._proc is not None:
            raise WorkbenchError("this training job has been started already")
        spec = self._prepare()
        try:
            self._spawn("jobs.child", [json.dumps(spec)])
        except WorkbenchError:
            self._abandon()
            raise

    def _note(self, line: str) -> None:
        self.stream.put(TrainNotice(line))

    # -- before the child --------------------------------------------------------------
    def _prepare(self) -> dict[str, Any]:
        from models.resolve import resolve_model

        cfg = self.config
        cfg.check()
        if not str(cfg.model).strip():
            raise BadSetting("no model given: pass --model with a model folder or repo id")
        has_sessions = bool(cfg.sessions or cfg.conversations)
        if has_sessions and str(cfg.data).strip():
            raise BadSetting("give either a data folder or sessions, not both")
        if not has_sessions and not str(cfg.data).strip():
            raise BadSetting("no training data: give --data DIR (train.jsonl, valid.jsonl) or "
                             "--sessions NAME ...")
        model_path = resolve_model(str(cfg.model), lambda _event: None)
        out = Path(cfg.adapter_path).expanduser().absolute()
        for line in recover(out):
            self._note(line)
        check_target(out)
        model_cfg = est.model_config(model_path)
        layers = model_cfg.get("num_hidden_layers")
        if isinstance(layers, int) and cfg.num_layers > layers:
            raise BadSetting(f"num_layers {cfg.num_layers} but {model_path.name} has {layers} "
                             f"layers: give --num-layers {layers} or less, or -1 for all")
        resume = check_resume_file(cfg.resume_adapter_file, cfg, layers if isinstance(
            layers, int) else None) if cfg.resume_adapter_file else None
        tokenizer = _load_tokenizer(model_path, model_cfg, cfg.trust_remote_code)
        staging = Staging(out)
        data_dir: Path
        try:
            if has_sessions:
                _create(staging)
                self._staging = staging
                data_dir = self._session_data(staging.path / DATA)
                label = "sessions"
            else:
                data_dir = Path(cfg.data).expanduser().absolute()
                label = str(cfg.data)
            summary = train_data.check_folder(
                data_dir, tokenizer, max_seq_length=cfg.max_seq_length,
                batch_size=cfg.batch_size, mask_prompt=cfg.mask_prompt, extra=cfg.extra,
                label=label)
            if cfg.patience is not None and summary.valid == 0:
                raise BadSetting("--patience needs validation data (valid.jsonl, or "
                                 "--valid-share above 0 with sessions)")
            report = est.estimate(
                model_path, fine_tune_type=cfg.fine_tune_type, num_layers=cfg.num_layers,
                batch_size=cfg.batch_size,
                sequence=est.padded(max(summary.longest, 1), cfg.max_seq_length),
                lora_parameters=cfg.lora_parameters, optimizer=cfg.optimizer,
                grad_checkpoint=cfg.grad_checkpoint, name=model_path.name)
            est.check(report)
            if report.verdict == "tight":
                self._note(report.message())
            if self._staging is None:
                _create(staging)
                self._staging = staging
        except BaseException:
            self._abandon()
            raise
        self.adapter_path, self.estimate, self.data = out, report, summary
        args = cfg.to_mlx_args()
        args.update(model=str(model_path), data=str(data_dir), adapter_path=str(staging.path))
        if resume is not None:
            args["resume_adapter_file"] = str(resume)
        return {
            "args": args,
            "staging": staging.to_dict(),
            "data_in_folder": has_sessions,
            "patience": cfg.patience,
            "estimate_bytes": report.need,
            "started": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "workbench": cfg.workbench_settings(),
        }

    def _session_data(self, folder: Path) -> Path:
        cfg = self.config
        sessions = list(cfg.conversations)
        if cfg.sessions:
            if not cfg.sessions_dir:
                raise BadSetting("no sessions folder given (sessions_dir)")
            sessions += train_data.load_sessions(cfg.sessions, cfg.sessions_dir)
        examples: list[dict[str, Any]] = []
        for session in sessions:
            found = train_data.session_examples(session, only_good=cfg.only_good)
            if not found:
                what = "no reply marked good or edited" if cfg.only_good else "no reply"
                self._note(f"session {session.name!r} has {what}: it adds no examples")
            examples += found
        if not examples:
            what = "replies marked good or edited" if cfg.only_good else "replies"
            raise train_data.TrainDataError(f"the sessions given hold no {what} to train on: "
                                            "choose other sessions"
                                            + (" or drop --only-good" if cfg.only_good else ""))
        train, valid = train_data.split(examples, float(cfg.valid_share), cfg.seed,
                                        at_least=cfg.batch_size)
        share = round(len(examples) * float(cfg.valid_share))
        if valid and len(valid) > max(share, 1):
            self._note(
                f"validation takes whole batches: {len(valid)} examples held out (valid_share "
                f"{cfg.valid_share} gives {share}), one batch of {cfg.batch_size}")
        if len(train) < cfg.batch_size:
            raise train_data.TrainDataError(
                f"the sessions give {len(train)} training examples, fewer than batch_size "
                f"{cfg.batch_size}: lower --batch-size or add sessions")
        if valid and len(valid) < cfg.batch_size:
            raise train_data.TrainDataError(
                f"the sessions give {len(valid)} validation examples (valid_share "
                f"{cfg.valid_share}), fewer than batch_size {cfg.batch_size}: raise "
                "--valid-share, lower --batch-size, or give --valid-share 0 (no validation)")
        self._note(f"{len(examples)} examples from {len(sessions)} "
                   f"session{'s' if len(sessions) != 1 else ''}: {len(train)} "
                   f"to train on, {len(valid)} to validate")
        return train_data.write_folder(folder, train, valid)

    def _abandon(self) -> None:
        if self._staging is not None:
            self._staging.abandon()

    # -- how it ended ---------------------------------------------------------------------
    def _conclude(self, child_final: TrainFinished | TrainFailed | None, ended: Ended
                  ) -> TrainFinished | TrainFailed:
        """The run's last event, once the adapter folder is as it must stay."""
        if isinstance(child_final, TrainFinished):  # the new folder is in place already
            return child_final
        self._abandon()
        if ended.cancelled:
            return TrainFailed("training cancelled: the adapter folder was left as it was",
                               "cancelled")
        if child_final is not None:
            return child_final
        return TrainFailed(*self.crash_line(
            ended, "the adapter folder was left as it was",
            "lower --batch-size or --max-seq-length, or add --grad-checkpoint"))

    def _failed(self, message: str, kind: str) -> TrainFailed:
        self._abandon()
        return TrainFailed(message, kind)


def _create(staging: Staging) -> None:
    try:
        staging.create()
    except OSError as exc:
        raise WorkbenchError(f"cannot write beside {staging.out} ({exc.strerror or exc}): give "
                             "an --adapter-path in a folder you can write to") from None


def _load_tokenizer(model_path: Path, model_cfg: dict[str, Any], trust_remote_code: bool) -> Any:
    """The tokenizer mlx-lm's ``load`` gives the trainer (no MLX work: any thread)."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    try:
        return load_tokenizer(model_path, {"trust_remote_code": trust_remote_code},
                              eos_token_ids=model_cfg.get("eos_token_id"))
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(f"the tokenizer of {model_path.name} cannot be loaded ({first})"
                             ) from None
