"""The segment folder ``NAME.cache/`` on disk: its manifest's format, and reading, writing and
cleaning the folder (no MLX).

Why a module of its own: ``manifest.json`` is the commit point of incremental prompt-cache
saves (``sessions.cache_segments`` says how the chain works), and the store (any thread)
needs the folder and its manifest without the engine-thread code that cuts and joins K/V
arrays. Here: ``Manifest`` and ``Segment`` (what the manifest says, checked as it is read),
``SegmentsUnusable``, ``SegmentFolder`` (the marked, private folder: it writes the manifest
atomically and deletes only regular files of ours named like segments or temp files), and
``saved_tokens``/``remember`` (the token ids a chain holds, read from segment headers
without reading tensors, remembered between saves).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.atomic import atomic_write, fsync_dir
from common.safetensors_header import SafetensorsHeaderError, read_safetensors_header

from .cache_file import CacheUnusable

SEGMENTS_SCHEMA = 1
MANIFEST = "manifest.json"
MARKER = ".workbench-cache"
MANIFEST_KIND = "workbench-prompt-cache-segments"
SUFFIX = ".cache"
_SEGMENT_NAME = re.compile(r"^seg-\d{8,}-\d{8,}-[0-9a-f]{8}\.safetensors$")


class SegmentsUnusable(CacheUnusable):
    """Why the segment folder (or one segment) cannot be used; completes "the saved prompt
    cache ..."."""


@dataclass(frozen=True)
class Segment:
    file: str
    start: int
    end: int
    digest: str
    bytes: int = 0

    @property
    def tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says: the base's checksum and used tokens, then the segments."""

    fingerprint: str
    adapter: str
    classes: tuple[str, ...]
    quant: tuple[tuple[int, int] | None, ...]  # (group_size, bits) per quantized layer
    base_digest: str
    base_tokens: int
    segments: tuple[Segment, ...] = ()

    @property
    def total(self) -> int:
        return self.segments[-1].end if self.segments else self.base_tokens

    def to_json(self) -> bytes:
        data = {
            "schema": SEGMENTS_SCHEMA, "kind": MANIFEST_KIND,
            "fingerprint": self.fingerprint, "adapter": self.adapter,
            "classes": list(self.classes),
            "quant": [list(q) if q else None for q in self.quant],
            "base": {"digest": self.base_digest, "tokens": self.base_tokens},
            "segments": [{"file": s.file, "start": s.start, "end": s.end, "digest": s.digest,
                          "bytes": s.bytes} for s in self.segments],
        }
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        def bad(what: str) -> SegmentsUnusable:
            return SegmentsUnusable(f"has a damaged segment manifest ({what})")

        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad("not JSON") from None
        if not isinstance(data, dict) or data.get("kind") != MANIFEST_KIND:
            raise bad("not a workbench manifest")
        if data.get("schema") != SEGMENTS_SCHEMA:
            raise SegmentsUnusable(f"has segments of schema {data.get('schema')!r}, not "
                                   f"{SEGMENTS_SCHEMA}")
        try:
            base = data["base"]
            segments = tuple(Segment(str(s["file"]), _whole(s["start"]), _whole(s["end"]),
                                     str(s["digest"]), _whole(s.get("bytes", 0)))
                             for s in data["segments"])
            quant = tuple(None if q is None else (_whole(q[0]), _whole(q[1]))
                          for q in data["quant"])
            manifest = cls(str(data["fingerprint"]), str(data["adapter"]),
                           tuple(str(c) for c in data["classes"]), quant,
                           str(base["digest"]), _whole(base["tokens"]), segments)
        except (KeyError, TypeError, ValueError, IndexError):
            raise bad("a field is missing or of the wrong kind") from None
        at = manifest.base_tokens
        for s in segments:
            if s.start != at or s.end <= s.start or not _SEGMENT_NAME.match(s.file):
                raise bad(f"segment {s.file!r} does not follow on at token {at}")
            at = s.end
        if len(quant) != len(manifest.classes):
            raise bad("one quantization entry per layer is expected")
        return manifest


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


# -- the folder ----------------------------------------------------------------------------
class SegmentFolder:
    """``NAME.cache/`` beside the transcript. Every method that writes or deletes checks
    first that the folder is the workbench's (``check``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def check(self, create: bool = False) -> None:
        """Raise ``SegmentsUnusable`` unless the folder is one the workbench made: a real
        folder (no link), this user's, with the marker file. With ``create``, make it
        (private, marked) if nothing is there."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not create:
                raise SegmentsUnusable("has no segment folder") from None
            self.path.mkdir(mode=0o700)
            os.chmod(self.path, 0o700)
            atomic_write(self.path / MARKER, b"prompt-cache segments of a workbench session\n")
            fsync_dir(self.path.parent)
            return
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise SegmentsUnusable(f"has {self.path.name} in the way, not a folder the "
                                   "workbench made (it was left as it is)")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise SegmentsUnusable(f"has {self.path.name} owned by another user (it was left "
                                   "as it is)")
        marker = self.path / MARKER
        try:
            mst = os.lstat(marker)
        except FileNotFoundError:
            raise SegmentsUnusable(f"has a folder {self.path.name} the workbench did not make "
                                   "(it was left as it is)") from None
        if not stat.S_ISREG(mst.st_mode):
            raise SegmentsUnusable(f"has a folder {self.path.name} with an odd marker (it was "
                                   "left as it is)")
        if stat.S_IMODE(st.st_mode) & 0o077:
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o700)

    def read_manifest(self) -> Manifest | None:
        """The manifest, or None when there is none; ``SegmentsUnusable`` if damaged."""
        self.check()
        try:
            raw = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SegmentsUnusable(f"has a segment manifest that cannot be read "
                                   f"({exc.strerror})") from None
        return Manifest.from_json(raw)

    def write_manifest(self, manifest: Manifest) -> None:
        self.check()
        atomic_write(self.manifest_path, manifest.to_json())

    def cleanup(self, manifest: Manifest | None) -> int:
        """Delete the segments ``manifest`` does not name and the temp files of killed
        writers: regular files of ours with our names only. Returns how many went."""
        self.check()
        keep = {s.file for s in manifest.segments} if manifest else set()
        gone = 0
        for entry in os.scandir(self.path):
            name = entry.name
            ours = (_SEGMENT_NAME.match(name) and name not in keep) or (
                name.startswith((".seg-", f".{MANIFEST}.", f".{MARKER}.")) and "tmp" in name)
            if not ours:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid")
                                                and st.st_uid != os.getuid()):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                gone += 1
        return gone

    def size_bytes(self) -> int:
        total = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def segment_tokens(self, segment: Segment) -> list[int]:
        """The token ids a segment's header names (no tensor is read)."""
        try:
            header = read_safetensors_header(self.path / segment.file)
        except SafetensorsHeaderError as exc:
            raise SegmentsUnusable(f"has a segment {segment.file} that {exc.reason}") from None
        tokens = _tokens(header.metadata.get("tokens", ""))
        if tokens is None or len(tokens) != segment.tokens:
            raise SegmentsUnusable(f"has a segment {segment.file} whose token ids are "
                                   "damaged")
        return tokens


def _tokens(text: str) -> list[int] | None:
    try:
        tokens = json.loads(text)
    except ValueError:
        return None
    if isinstance(tokens, list) and all(type(t) is int and t >= 0 for t in tokens):
        return tokens
    return None


# -- what was saved, without reading tensors -----------------------------------------------
_memo: dict[str, tuple[bytes, list[int]]] = {}
_memo_lock = threading.Lock()


def saved_tokens(folder: SegmentFolder, manifest: Manifest, base_tokens: list[int]) -> list[int]:
    """The token ids the chain holds: the base's used ones, then each segment's (remembered
    between saves of this process; read from the segments' headers otherwise)."""
    key = str(folder.path)
    raw = manifest.to_json()
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None and hit[0] == raw:
        return list(hit[1])
    tokens = list(base_tokens[: manifest.base_tokens])
    for segment in manifest.segments:
        tokens += folder.segment_tokens(segment)
    remember(folder, manifest, tokens)
    return tokens


def remember(folder: SegmentFolder, manifest: Manifest | None, tokens: list[int]) -> None:
    with _memo_lock:
        if manifest is None:
            _memo.pop(str(folder.path), None)
        else:
            _memo[str(folder.path)] = (manifest.to_json(), list(tokens))
