"""Read the header of a safetensors file, strictly, without loading any tensor.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (a
table of tensors, each ``{"dtype", "shape", "data_offsets": [start, end]}``, plus an optional
``"__metadata__"`` table of strings), then the tensor data. ``read_safetensors_header`` checks
everything the format promises (the header length is bounded and fits the file, the JSON is a
table, every entry is well formed, its byte count matches its dtype and shape, the entries tile
the data exactly with no gap, overlap or missing tail) and raises ``SafetensorsHeaderError``
with a one-line reason otherwise. It reads ``8 + n`` bytes: cheap, and safe on any thread.

``SafetensorsHeaderError.reason`` completes a sentence about the file ("is truncated",
"is damaged (its header is not valid JSON)"); ``str()`` of the error names the file first.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit
METADATA_KEY = "__metadata__"

# Bits per element of each dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F4",
                          "F6_E2M3", "F6_E3M2"})


class SafetensorsHeaderError(ValueError):
    """The file is not a well-formed safetensors file (or cannot be read).

    ``reason`` completes "the file ..." in one line; ``path`` is the file.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name} {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it. ``start``/``end`` are offsets in the data
    section (add ``SafetensorsHeader.data_start`` for a position in the file)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def count(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A parsed, checked header. ``tensors`` keeps the file's order; ``metadata`` is the
    ``__metadata__`` table as written (string keys and values)."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    header_bytes: int  # n, the JSON's length
    file_bytes: int

    @property
    def data_start(self) -> int:
        """Where the tensor data begins in the file."""
        return 8 + self.header_bytes

    @property
    def data_bytes(self) -> int:
        return self.file_bytes - self.data_start


def _fail(path: Path, reason: str) -> SafetensorsHeaderError:
    return SafetensorsHeaderError(path, reason)


def _whole(value: object) -> bool:
    return type(value) is int and value >= 0


def _entry(path: Path, name: str, raw: object) -> TensorEntry:
    if not isinstance(raw, dict):
        raise _fail(path, f"is damaged (tensor {name!r} is not a table)")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _fail(path, f"is damaged (tensor {name!r} has an unknown dtype {dtype!r})")
    if not isinstance(shape, list) or not all(_whole(d) for d in shape):
        raise _fail(path, f"is damaged (tensor {name!r} has a malformed shape)")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise _fail(path, f"is damaged (tensor {name!r} has malformed data offsets)")
    entry = TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])
    bits = entry.count * DTYPE_BITS[dtype]
    if bits % 8 or bits // 8 != entry.nbytes:
        raise _fail(path, f"is damaged (tensor {name!r} holds {entry.nbytes} bytes, its dtype "
                          f"{dtype} and shape {list(shape)} need {bits / 8:g})")
    return entry


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """The checked header of the safetensors file at ``path``; never reads tensor data.

    Raises ``SafetensorsHeaderError`` (a ``ValueError``) when the file is missing,
    unreadable, truncated or damaged in any way the header can show.
    """
    file = Path(path)
    try:
        with open(file, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(8)
            if len(head) < 8:
                raise _fail(file, "is empty or truncated (shorter than a safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER:
                raise _fail(file, f"is not a safetensors file (its header would be {n} bytes)")
            if n > size - 8:
                raise _fail(file, "is truncated or not a safetensors file (its header runs "
                                  "past the end)")
            raw = fh.read(n)
    except OSError as exc:
        raise _fail(file, f"cannot be read ({exc.strerror or exc})") from None
    if len(raw) != n:
        raise _fail(file, "is truncated (it changed while being read)")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail(file, "is damaged (its header is not valid JSON)") from None
    if not isinstance(header, dict):
        raise _fail(file, "is damaged (its header is not a table)")
    meta = header.get(METADATA_KEY, {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise _fail(file, "is damaged (its metadata is not a table of strings)")
    tensors = {name: _entry(file, name, value) for name, value in header.items()
               if name != METADATA_KEY}
    data = size - 8 - n
    at = 0
    for entry in sorted(tensors.values(), key=lambda e: (e.start, e.end)):
        if entry.start != at:
            what = "overlap" if entry.start < at else "leave a gap"
            raise _fail(file, f"is damaged (its tensors {what} at byte {at} of the data)")
        at = entry.end
    if at > data:
        raise _fail(file, f"is truncated (its tensors need {at} bytes of data, it has {data})")
    if at < data:
        raise _fail(file, f"is damaged ({data - at} bytes after the last tensor)")
    return SafetensorsHeader(file, tensors, dict(meta), n, size)
