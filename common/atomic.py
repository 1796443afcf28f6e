"""Crash-safe file writing: a temporary file in the same folder, flushed and
fsynced, then renamed over the old one, so a crash at any moment leaves either
the previous version or the new one, never half of each. Sessions, the config,
the recent-models list and the jobs' records all write through here."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *,
                 overwrite: bool = True) -> None:
    """Write through a temporary file in the same folder, fsync, rename: never half-written.

    With ``overwrite=False`` an existing ``path`` (even one that appears meanwhile) is never
    replaced: ``FileExistsError`` instead.
    """
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data), mode, overwrite=overwrite)


def atomic_write_with(path: Path, write: Callable[[Path], object], mode: int = 0o600,
                      suffix: str = ".tmp", *, overwrite: bool = True) -> None:
    """Like ``atomic_write``, for writers that want a file name (``write(tmp_path)``).

    ``suffix`` is the temporary file's ending (some writers, such as MLX's safetensors
    saver, insist on their own extension).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _publish_new(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` only if nothing is at ``path`` (a hard link fails if the
    name is taken; where links are not supported, a check then a rename)."""
    try:
        os.link(tmp, path, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        if os.path.lexists(path):
            raise FileExistsError(17, "File exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_files(folder: Path, name: str) -> Iterator[Path]:
    """Temporary files an interrupted ``atomic_write`` of ``folder/name`` may have left."""
    yield from folder.glob(f".{glob_escape(name)}.*tmp*")


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
