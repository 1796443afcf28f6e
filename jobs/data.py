"""Training data: a folder in mlx-lm's formats, checked before a run starts, or examples made
from saved sessions.

``check_folder`` reads ``train.jsonl``, ``valid.jsonl`` (and ``test.jsonl``, which mlx-lm
also reads) the way ``mlx_lm.tuner.datasets`` will, and says in one line per bad record what
is wrong (``file:line: ...``): not UTF-8, blank line, invalid JSON, not an object, keys of
no mlx-lm format or of another format than the file's first record, a record longer than
``max_seq_length`` tokens (mlx-lm would cut it silently), too few examples for a batch.

``session_examples`` turns a session into chat examples (``{"messages": [...]}``), one per
reply: the conversation up to it, the reply as the target (its ``edited`` text when the user
corrected it). Sessions are only read, never written.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError

FILES = ("train", "valid", "test")
MAX_LINES_PER_FILE = 20  # problems listed per file; the rest are counted


class TrainDataError(WorkbenchError):
    """The data cannot be trained on. ``problems``: one line per bad record."""

    kind = "data"

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class DataSummary:
    """What a checked folder holds."""

    folder: Path
    format: str  # chat | completions | text
    train: int
    valid: int
    longest: int  # tokens of the longest training or validation record


@dataclass(frozen=True)
class _Features:
    chat: str = "messages"
    prompt: str = "prompt"
    completion: str = "completion"
    text: str = "text"

    @classmethod
    def of(cls, extra: dict[str, Any]) -> _Features:
        return cls(chat=str(extra.get("chat_feature", "messages")),
                   prompt=str(extra.get("prompt_feature", "prompt")),
                   completion=str(extra.get("completion_feature", "completion")),
                   text=str(extra.get("text_feature", "text")))

    def format_of(self, record: dict[str, Any]) -> str | None:
        """mlx-lm's choice (``create_dataset``): completions, then chat, then text."""
        if self.prompt in record and self.completion in record:
            return "completions"
        if self.chat in record:
            return "chat"
        if self.text in record:
            return "text"
        return None

    def keys(self, fmt: str) -> str:
        return {"completions": f"'{self.prompt}' and '{self.completion}'",
                "chat": f"'{self.chat}'", "text": f"'{self.text}'"}[fmt]


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _record_problem(record: dict[str, Any], fmt: str, feat: _Features) -> str | None:
    """What is wrong with one record of format ``fmt`` (None: nothing)."""
    if fmt == "chat":
        messages = record.get(feat.chat)
        if not isinstance(messages, list) or not messages:
            return f"'{feat.chat}' must be a non-empty list of messages, not {_short(messages)}"
        for i, m in enumerate(messages, 1):
            if not isinstance(m, dict):
                return f"message {i} must be an object with role and content, not {_short(m)}"
            if not isinstance(m.get("role"), str):
                return f"message {i} has no role (a string: system, user or assistant)"
            if "content" not in m or not isinstance(m["content"], str | list | type(None)):
                return f"message {i} has no content (a string)"
        return None
    if fmt == "completions":
        for key in (feat.prompt, feat.completion):
            if not isinstance(record.get(key), str):
                return f"'{key}' must be a string, not {_short(record.get(key))}"
        return None
    if not isinstance(record.get(feat.text), str):
        return f"'{feat.text}' must be a string, not {_short(record.get(feat.text))}"
    return None


def _tokens(record: dict[str, Any], fmt: str, feat: _Features, tokenizer: Any) -> int:
    """The record's length in tokens, as mlx-lm's dataset classes tokenize it."""
    tools = record.get("tools")
    if fmt == "chat":
        return len(tokenizer.apply_chat_template(record[feat.chat], tools=tools,
                                                 return_dict=False))
    if fmt == "completions":
        messages = [{"role": "user", "content": record[feat.prompt]},
                    {"role": "assistant", "content": record[feat.completion]}]
        return len(tokenizer.apply_chat_template(messages, tools=tools, return_dict=False))
    ids = tokenizer.encode(record[feat.text])
    return len(ids) + (0 if ids and ids[-1] == tokenizer.eos_token_id else 1)


@dataclass
class _FileReport:
    name: str
    records: int = 0
    longest: int = 0
    fmt: str | None = None


def _check_file(path: Path, label: str, tokenizer: Any, feat: _Features, max_seq_length: int,
                mask_prompt: bool, measure: bool, problems: list[str]) -> _FileReport:
    report = _FileReport(path.name)
    mine: list[str] = []

    def bad(line: int | None, what: str) -> None:
        mine.append(f"{label}:{line}: {what}" if line else f"{label}: {what}")

    if not path.is_file():  # a pipe would block the read forever, a folder cannot be read
        problems.append(f"{label}: not a regular file: put the examples in a plain file")
        return report
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(f"{label}: cannot be read ({exc.strerror or exc})")
        return report
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = raw.count(b"\n", 0, exc.start) + 1
        bad(at, f"not UTF-8 text (byte {exc.start} of the file): save it as UTF-8")
        problems.extend(mine)
        return report
    if not text.strip():
        bad(None, "empty: put one JSON object per line (mlx-lm's chat, completions or text "
                  "format)")
        problems.extend(mine)
        return report
    first_line = 0
    # Lines exactly as mlx-lm iterates the file (universal newlines).
    for number, row in enumerate(io.StringIO(text, newline=None), 1):
        if not row.strip():
            bad(number, "blank line: mlx-lm reads every line as one JSON record; remove it")
            continue
        try:
            record = json.loads(row)
        except ValueError as exc:
            msg = getattr(exc, "msg", str(exc))
            col = getattr(exc, "colno", None)
            bad(number, f"invalid JSON ({msg}{f' at column {col}' if col else ''})")
            continue
        if not isinstance(record, dict):
            bad(number, f"a JSON object is expected, not {type(record).__name__}")
            continue
        fmt = feat.format_of(record)
        if report.fmt is None:
            if fmt is None:
                found = ", ".join(f"'{k}'" for k in list(record)[:4]) or "no keys"
                bad(number, f"keys of no mlx-lm format (found {found}): use 'messages' (chat), "
                            f"'prompt' and 'completion', or 'text'")
                continue
            report.fmt, first_line = fmt, number
            if fmt == "text" and mask_prompt:
                bad(number, "text records have no prompt to mask: drop --mask-prompt or use "
                            "the chat or completions format")
        elif fmt != report.fmt:
            found = ", ".join(f"'{k}'" for k in list(record)[:4]) or "no keys"
            bad(number, f"wrong keys: expected {feat.keys(report.fmt)} ({report.fmt}, like "
                        f"line {first_line}), found {found}")
            continue
        problem = _record_problem(record, report.fmt, feat)
        if problem:
            bad(number, problem)
            continue
        report.records += 1
        if measure:
            try:
                n = _tokens(record, report.fmt, feat, tokenizer)
            except Exception as exc:  # noqa: BLE001 - a chat template may raise anything
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(
                    exc).__name__
                bad(number, f"the model's chat template cannot render it ({first})")
                continue
            report.longest = max(report.longest, n)
            if n > max_seq_length:
                bad(number, f"{n} tokens, longer than max_seq_length {max_seq_length} (mlx-lm "
                            "would cut it): shorten or split it, or raise --max-seq-length")
    if len(mine) > MAX_LINES_PER_FILE:
        more = len(mine) - MAX_LINES_PER_FILE
        mine = [*mine[:MAX_LINES_PER_FILE], f"{label}: ... and {more} more problems"]
    problems.extend(mine)
    return report


def check_folder(folder: str | Path, tokenizer: Any, *, max_seq_length: int, batch_size: int,
                 mask_prompt: bool = False, extra: dict[str, Any] | None = None,
                 label: str | None = None) -> DataSummary:
    """Check a data folder as mlx-lm will read it; raise ``TrainDataError`` with one line per
    bad record (``file:line: what is wrong``), or return what it holds."""
    folder = Path(folder).expanduser()
    shown = label or str(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise TrainDataError(f"data folder {shown} {what}: give a folder with train.jsonl "
                             "and valid.jsonl (mlx-lm's formats)")
    if not (folder / "train.jsonl").exists():
        raise TrainDataError(f"{shown} has no train.jsonl: put the training examples there, "
                             "one JSON object per line (valid.jsonl for validation)")
    feat = _Features.of(extra or {})
    problems: list[str] = []
    reports: dict[str, _FileReport] = {}
    for name in FILES:
        path = folder / f"{name}.jsonl"
        if path.exists():
            reports[name] = _check_file(path, f"{shown}/{name}.jsonl", tokenizer, feat,
                                        max_seq_length, mask_prompt, name != "test", problems)
    for name in ("train", "valid"):
        r = reports.get(name)
        if r is not None and 0 < r.records < batch_size and not problems:
            problems.append(f"{shown}/{name}.jsonl: {r.records} examples, fewer than batch_size "
                            f"{batch_size}: add examples or lower --batch-size")
    if problems:
        count = len(problems)
        raise TrainDataError(f"{count} problem{'s' if count > 1 else ''} in the training data "
                             f"(first: {problems[0]}); fix {'them' if count > 1 else 'it'} and "
                             "start again (nothing was trained)", problems)
    train, valid = reports["train"], reports.get("valid")
    return DataSummary(folder, train.fmt or "chat", train.records,
                       valid.records if valid else 0,
                       max(train.longest, valid.longest if valid else 0))


# -- sessions ---------------------------------------------------------------------------------
def session_examples(session: Any, only_good: bool = False) -> list[dict[str, Any]]:
    """Chat examples from one ``sessions.Session``: one per reply chosen as a target, with
    the conversation before it (and the system prompt it was written under).

    Targets: every reply with text that was not cancelled, or with ``only_good`` only the
    replies marked good or edited. An edited reply's ``edited`` text is the target, and
    stands for that reply in the conversation of later examples too.
    """
    examples: list[dict[str, Any]] = []
    history: list[dict[str, str]] = []
    for m in session.messages:
        if m.role != "assistant":
            history.append({"role": m.role, "content": m.content})
            continue
        edited = getattr(m, "edited", None)
        target = edited if edited is not None else m.content
        if not target:
            continue  # cancelled before its first token: not part of the conversation
        good = bool(getattr(m, "good", False))
        chosen = (good or edited is not None) if only_good else (
            good or edited is not None or not m.cancelled)
        if chosen and history and history[-1]["role"] == "user":
            system = session.system_prompt_of(m)
            head = [{"role": "system", "content": system}] if system else []
            examples.append({"messages": [*head, *history,
                                          {"role": "assistant", "content": target}]})
        history.append({"role": "assistant", "content": target})
    return examples


def load_sessions(names: Iterable[str], folder: str | Path) -> list[Any]:
    """Read the named sessions (read only: no lock is taken, nothing is written)."""
    from sessions.store import SessionStore

    store = SessionStore(folder)
    return [store.open(name) for name in names]


def split(examples: list[dict[str, Any]], valid_share: float, seed: int, at_least: int = 1
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, valid): ``valid_share`` of the examples, but at least ``at_least`` (mlx-lm
    validates in whole batches) when the share is not 0 and as many are left to train on;
    chosen by ``seed``; each part keeps the examples' order."""
    n = len(examples)
    n_valid = round(n * valid_share) if valid_share > 0 else 0
    if valid_share > 0 and n >= 2:
        floor = at_least if n - at_least >= at_least else 1
        n_valid = min(max(n_valid, floor), n - 1)
    order = list(range(n))
    random.Random(f"workbench-split-{seed}").shuffle(order)
    held = set(order[:n_valid])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


def write_folder(folder: Path, train: list[dict[str, Any]], valid: list[dict[str, Any]]) -> Path:
    """Write ``train.jsonl`` (and ``valid.jsonl`` when there are validation examples)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid)):
        if rows:
            (folder / f"{name}.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                encoding="utf-8")
    return folder
