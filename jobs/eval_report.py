"""What an evaluation is made of and gives back, and how it is written out.

``EvalCandidate`` (a column: the base model or an adapter at a scale), ``EvalReply`` and
``EvalProgress`` (the events of a run), ``EvalReport`` (everything measured, rendered as
Markdown for people or as versioned JSON for programs) and the export rule that a command
never replaces a file it did not make (``write_new_file``, ``check_new_file``).

Its own module because the faces (the Eval screen, ``workbench eval``) build candidates,
show replies and export reports without running anything: none of this touches the engine
or MLX. ``evaluate.py`` runs the evaluation and fills the report.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError
from jobs.eval_prompts import Messages

SCHEMA = "workbench-eval"
SCHEMA_VERSION = 1


class ExportExists(WorkbenchError):
    """An export would replace a file: a command never overwrites a file it did not make."""

    kind = "exists"


@dataclass(frozen=True)
class EvalCandidate:
    """One column: the base model (``adapter`` None) or an adapter folder at ``scale`` times
    its trained scale (None = as trained)."""

    label: str
    adapter: str | None = None
    scale: float | None = None


@dataclass(frozen=True)
class EvalReply:
    """One candidate's reply to one prompt. Also emitted as an event as soon as it is done."""

    prompt_index: int
    label: str
    text: str
    tokens: int
    decode_tps: float
    finish_reason: str = ""
    prompt_tokens: int = 0


@dataclass(frozen=True)
class EvalProgress:
    """Emitted after each reply (``stage`` "reply") and each validation pass ("loss"):
    ``done`` of ``total`` steps, the last one by candidate ``label``."""

    done: int
    total: int
    label: str
    stage: str = "reply"


@dataclass
class EvalReport:
    """Everything an evaluation measured, ready to export."""

    model: str
    candidates: list[EvalCandidate]
    prompts: list[str]
    replies: list[EvalReply]
    val_loss: dict[str, float | None]
    perplexity: dict[str, float | None]
    # The full conversations the prompts were (context included), and the data the loss
    # was computed on (None: no validation data was given).
    conversations: list[Messages] = field(default_factory=list)
    valid_data: str | None = None
    val_batches: int = 0
    mask_prompt: bool = False  # the loss of the replies only (as --mask-prompt trains)
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def reply(self, prompt_index: int, label: str) -> EvalReply | None:
        for r in self.replies:
            if r.prompt_index == prompt_index and r.label == label:
                return r
        return None

    def mean_decode_tps(self, label: str) -> float | None:
        rates = [r.decode_tps for r in self.replies if r.label == label and r.tokens]
        return sum(rates) / len(rates) if rates else None

    def to_markdown(self) -> str:
        lines = [f"# Evaluation of {self.model}", ""]
        settings = ", ".join(f"{k} {v}" for k, v in self.params.items())
        lines.append(f"{len(self.prompts)} prompts, {len(self.candidates)} candidates"
                     + (f"; sampling: {settings}" if settings else "") + ".")
        if self.valid_data:
            lines.append(f"Validation loss: mlx-lm's `evaluate` on {self.valid_data} "
                         f"({_batches_text(self.val_batches)}; {_mask_text(self.mask_prompt)});"
                         " perplexity = exp(loss).")
        lines += ["", "| candidate | adapter | scale | val loss | perplexity | decode tok/s |"
                  " tokens |", "|---|---|---|---:|---:|---:|---:|"]
        for c in self.candidates:
            loss, ppl = self.val_loss.get(c.label), self.perplexity.get(c.label)
            tps = self.mean_decode_tps(c.label)
            tokens = sum(r.tokens for r in self.replies if r.label == c.label)
            lines.append("| " + " | ".join([
                _cell(c.label), _cell(c.adapter or "(base model)"),
                "-" if c.adapter is None else f"{c.scale if c.scale is not None else 1:g}",
                "-" if loss is None else f"{loss:.4f}",
                "-" if ppl is None else f"{ppl:.3f}",
                "-" if tps is None else f"{tps:.1f}", str(tokens)]) + " |")
        for i, prompt in enumerate(self.prompts):
            lines += ["", f"## Prompt {i + 1}", ""]
            context = self.conversations[i][:-1] if i < len(self.conversations) else []
            for m in context:
                lines.append(f"> *{m.get('role', '?')}:* {_quote(m.get('content', ''))}")
            lines += [f"> {_quote(prompt)}"]
            for c in self.candidates:
                r = self.reply(i, c.label)
                lines += ["", f"**{c.label}**"
                          + (f" ({r.tokens} tokens, {r.decode_tps:.1f} tok/s)" if r else ""),
                          ""]
                lines.append(_fenced(r.text if r else "(no reply)"))
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        data = {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "model": self.model,
            "candidates": [asdict(c) for c in self.candidates],
            "prompts": self.prompts,
            "conversations": self.conversations,
            "replies": [asdict(r) for r in self.replies],
            "val_loss": {k: _finite(v) for k, v in self.val_loss.items()},
            "perplexity": {k: _finite(v) for k, v in self.perplexity.items()},
            "valid_data": self.valid_data,
            "val_batches": self.val_batches,
            "mask_prompt": self.mask_prompt,
            "params": self.params,
            "seconds": self.seconds,
        }
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _mask_text(masked: bool) -> str:
    return ("prompt masked: the loss of the replies only" if masked
            else "whole examples: the prompt counts too")


def _batches_text(n: int) -> str:
    return "all batches" if n == -1 else f"at most {n} batches"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _quote(text: str) -> str:
    return text.replace("\n", "\n> ")


def _fenced(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def write_new_file(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path``, which must not exist (else ``ExportExists``, one line)."""
    target = Path(path).expanduser()
    check_new_file(target)
    try:
        with target.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise ExportExists(f"{target} already exists: give a new file name (it was left as "
                           "it is)") from None
    except OSError as exc:
        raise WorkbenchError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def check_new_file(path: str | Path) -> None:
    """Refuse, with one line, a path an export could not be written to as a new file."""
    target = Path(path).expanduser()
    if target.exists() or target.is_symlink():
        raise ExportExists(f"{target} already exists: give a new file name (it was left as "
                           "it is)")
    if not target.parent.is_dir():
        raise WorkbenchError(f"cannot write {target}: the folder {target.parent} does not "
                             "exist")
