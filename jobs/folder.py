"""The adapter folder a run writes: never a file the workbench did not create, never half
overwritten.

A run trains into a fresh hidden folder beside the target (``.NAME.training-PID-ID``). Only
when it has finished is the result moved into place: the previous run's folder (if any) is
renamed aside (``.NAME.old-PID-ID``), the new one renamed to ``NAME``, the old one deleted.
A run that is cancelled, crashes or is killed leaves the target as it was; ``recover``
puts things right after a killed swap or a killed parent.

A target may be new, an empty folder, or a folder an earlier run wrote: its ``training.json``
lists every file the run created, and a folder holding any other file is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError

RECORD = "training.json"
BEST = "best"
DATA = "data"
MARK = "mlx-workbench train"


class AdapterFolderTaken(WorkbenchError):
    """The adapter folder holds something a training run did not write: nothing changed."""

    kind = "adapter-folder"


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("written_by") == MARK else None


def files_of(folder: Path) -> list[str]:
    """Every file below ``folder``, as relative paths (links count as files)."""
    out = []
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_dir():
            out.append(path.relative_to(folder).as_posix())
    return out


def check_target(out: Path) -> None:
    """Raise ``AdapterFolderTaken`` unless a run may write ``out``: nothing there, an empty
    folder, or a folder an earlier run wrote and nobody has added to."""
    if out.is_symlink():
        raise AdapterFolderTaken(f"{out} is a symbolic link: give a new folder for the adapter "
                                 "(nothing was changed)")
    if not out.exists():
        return
    if not out.is_dir():
        raise AdapterFolderTaken(f"{out} is a file, not a folder: give a new folder for the "
                                 "adapter (nothing was changed)")
    present = files_of(out)
    if not present:
        return
    record = read_record(out)
    if record is None:
        raise AdapterFolderTaken(f"{out} holds files the workbench did not write (no "
                                 f"{RECORD} of an earlier run): give a new folder with "
                                 "--adapter-path (nothing was changed)")
    ours = set(record.get("files") or []) | {RECORD}
    foreign = [p for p in present if p not in ours]
    if foreign:
        more = f" and {len(foreign) - 1} more files" if len(foreign) > 1 else ""
        raise AdapterFolderTaken(f"{out} holds {foreign[0]}{more}"
                                 " that the earlier run there did not write: move it away or "
                                 "give a new folder with --adapter-path (nothing was changed)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _sibling_pid(name: str) -> int | None:
    try:
        return int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return None


def recover(out: Path) -> list[str]:
    """Tidy up after runs whose process is gone: a staging folder is deleted; a previous
    adapter renamed aside is put back when the target is missing (a swap was cut short),
    else deleted. Returns one line per thing done."""
    done: list[str] = []
    parent = out.parent
    if not parent.is_dir():
        return done
    for kind in ("old", "training"):
        for path in sorted(parent.glob(f".{out.name}.{kind}-*")):
            pid = _sibling_pid(path.name)
            if pid is None or _pid_alive(pid) or not path.is_dir():
                continue
            if kind == "old" and not out.exists():
                path.rename(out)
                done.append(f"put back the adapter of an interrupted run in {out}")
            else:
                shutil.rmtree(path, ignore_errors=True)
                done.append(f"removed {path.name}, left by an interrupted run")
    return done


class Staging:
    """The fresh folder one run writes, and the swap that puts it in place."""

    def __init__(self, out: Path) -> None:
        self.out = out
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = out.parent / f".{out.name}.training-{tag}"
        self.old = out.parent / f".{out.name}.old-{tag}"

    def create(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path.mkdir()
        return self.path

    def swap(self) -> None:
        """Put the finished run in place of ``out`` (two renames in one folder)."""
        if self.out.exists() or self.out.is_symlink():
            self.out.rename(self.old)
        self.path.rename(self.out)

    def drop_old(self) -> None:
        shutil.rmtree(self.old, ignore_errors=True)

    def abandon(self) -> None:
        """After a run that did not finish: the target as it was, the staging folder gone."""
        if self.old.exists() and not self.out.exists():
            self.old.rename(self.out)  # the swap was cut between its two renames
        with contextlib.suppress(OSError):
            shutil.rmtree(self.path)
        if self.old.exists():  # the swap was done: the new adapter is in place
            shutil.rmtree(self.old, ignore_errors=True)

    def to_dict(self) -> dict[str, str]:
        return {"out": str(self.out), "staging": str(self.path), "old": str(self.old)}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Staging:
        self = cls.__new__(cls)
        self.out, self.path, self.old = Path(data["out"]), Path(data["staging"]), Path(
            data["old"])
        return self
