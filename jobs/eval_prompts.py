"""The prompts of an evaluation: a JSONL file (or a data folder's ``valid.jsonl``), read and
checked before anything runs.

Its own module because reading a prompt file is all a face needs before an evaluation
starts (the Eval screen and ``workbench eval`` check the file as it is given) and because
each bad record is reported on a line of its own, which is a concern apart from running the
evaluation (``evaluate.py``) or reporting it (``eval_report.py``). Pure Python: no MLX.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError

Messages = list[dict[str, str]]

MAX_PROBLEM_LINES = 20  # bad prompt-file records listed before "and N more"
VALID_FILE = "valid.jsonl"


class PromptFileError(WorkbenchError):
    """The prompt file cannot be used. ``problems`` holds one line per bad record
    (``FILE:LINE: what is wrong``); ``str()`` is those lines joined, at most
    ``MAX_PROBLEM_LINES`` of them plus a last "and N more" line."""

    kind = "prompts"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        shown = list(self.problems[:MAX_PROBLEM_LINES])
        if len(self.problems) > MAX_PROBLEM_LINES:
            shown.append(f"... and {len(self.problems) - MAX_PROBLEM_LINES} more bad records")
        super().__init__("\n".join(shown))


def prompt_file(path: str | Path) -> Path:
    """The JSONL file behind ``path``: the file itself, or a data folder's ``valid.jsonl``."""
    p = Path(path).expanduser()
    if p.is_dir():
        valid = p / VALID_FILE
        if not valid.is_file():
            raise PromptFileError([f"{p} is a folder without {VALID_FILE}: give a JSONL file "
                                   "of prompts or a data folder with a validation set"])
        return valid
    if not p.exists():
        raise PromptFileError([f"{p}: no such file: give a JSONL file of prompts "
                               '({"prompt": ...} or {"messages": [...]} per line)'])
    return p


def _record_messages(record: Any) -> Messages | str:
    """The conversation of one record (ending with the user turn), or what is wrong."""
    if not isinstance(record, dict):
        return 'not a JSON object: use {"prompt": "..."} or {"messages": [...]}'
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            return '"prompt" must be a non-empty string'
        system = record.get("system")
        out: Messages = []
        if isinstance(system, str) and system:
            out.append({"role": "system", "content": system})
        out.append({"role": "user", "content": prompt})
        return out
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return '"messages" must be a non-empty list of {"role", "content"} objects'
        clean: Messages = []
        for j, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                return f'message {j + 1} needs a "role" and a "content" string'
            clean.append({"role": m["role"], "content": m["content"]})
        last_user = max((j for j, m in enumerate(clean) if m["role"] == "user"), default=-1)
        if last_user < 0:
            return '"messages" has no user turn to use as the prompt'
        return clean[: last_user + 1]  # the reply that follows (if any) is what we generate
    if "text" in record:
        return 'a "text" record has no prompt: use {"prompt": ...} or {"messages": [...]}'
    return 'no "prompt" or "messages" key: use {"prompt": "..."} or {"messages": [...]}'


def load_prompts(path: str | Path) -> list[Messages]:
    """The conversations of a prompt file, each ending with the user turn to answer.

    ``path`` is a JSONL file, or a data folder (its ``valid.jsonl``). Each line is
    ``{"prompt": ..., "system"?: ...}``, ``{"prompt": ..., "completion": ...}`` (mlx-lm's
    completions format; the completion is ignored) or ``{"messages": [...]}`` (the last user
    turn is the prompt, earlier messages its context, later ones are dropped). Blank lines
    are skipped. Raises ``PromptFileError`` with one line per bad record.
    """
    file = prompt_file(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError([f"{file} cannot be read: {getattr(exc, 'strerror', None) or exc}"
                               ]) from None
    out: list[Messages] = []
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            problems.append(f"{file}:{n}: not valid JSON ({str(exc).split(':')[0]})")
            continue
        got = _record_messages(record)
        if isinstance(got, str):
            problems.append(f"{file}:{n}: {got}")
        else:
            out.append(got)
    if problems:
        raise PromptFileError(problems)
    if not out:
        raise PromptFileError([f"{file} holds no prompts: write one JSON object per line"])
    return out
