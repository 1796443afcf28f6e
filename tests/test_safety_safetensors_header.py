"""common.safetensors_header: one strict reader for every safetensors header the workbench
reads (model catalog, fingerprints, prompt caches, adapters)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from common.safetensors_header import MAX_HEADER, SafetensorsHeaderError, read_safetensors_header


def _raw(path, header: object, data: bytes = b"", size: int | None = None) -> None:
    body = json.dumps(header).encode() if not isinstance(header, bytes) else header
    n = len(body) if size is None else size
    path.write_bytes(struct.pack("<Q", n) + body + data)


def test_reads_what_safetensors_wrote(tmp_path):
    file = tmp_path / "ok.safetensors"
    save_file({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.int8),
               "empty": np.zeros((0, 5), np.float16)}, str(file), metadata={"k": "v"})
    header = read_safetensors_header(file)
    assert header.metadata == {"k": "v"}
    with safe_open(str(file), "numpy") as f:
        assert sorted(header.tensors) == sorted(f.keys())
    a = header.tensors["a"]
    assert (a.dtype, a.shape, a.nbytes, a.count) == ("F32", (2, 3), 24, 6)
    assert header.data_start + header.data_bytes == header.file_bytes == file.stat().st_size


def test_reads_the_demo_kits_files(demo_kit):
    files = list(demo_kit.root.rglob("*.safetensors"))
    assert files
    for f in files:
        assert read_safetensors_header(f).tensors


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(("case", "expect"), [
    ("empty", "is empty or truncated"),
    ("huge-length", "is not a safetensors file"),
    ("past-end", "header runs past the end"),
    ("not-json", "not valid JSON"),
    ("deep-json", "not valid JSON"),
    ("not-table", "not a table"),
    ("bad-dtype", "unknown dtype"),
    ("bad-shape", "malformed shape"),
    ("bad-offsets", "malformed data offsets"),
    ("size-mismatch", "need 8"),
    ("overlap", "overlap"),
    ("gap", "leave a gap"),
    ("truncated-data", "is truncated"),
    ("trailing-data", "bytes after the last tensor"),
    ("bad-metadata", "metadata is not a table of strings"),
])
def test_damage_is_one_clear_line(tmp_path, case, expect):
    f = tmp_path / "x.safetensors"
    data = b"\0" * 8
    builders = {
        "empty": lambda: f.write_bytes(b"\1\2"),
        "huge-length": lambda: f.write_bytes(b"\xff" * 16),
        "past-end": lambda: _raw(f, GOOD, size=10_000),
        "not-json": lambda: _raw(f, b"{nope", data),
        "deep-json": lambda: _raw(f, b"[" * 100_000, data),
        "not-table": lambda: _raw(f, [1, 2], data),
        "bad-dtype": lambda: _raw(f, {"a": {**GOOD["a"], "dtype": "Q9"}}, data),
        "bad-shape": lambda: _raw(f, {"a": {**GOOD["a"], "shape": [-2]}}, data),
        "bad-offsets": lambda: _raw(f, {"a": {**GOOD["a"], "data_offsets": [8, 0]}}, data),
        "size-mismatch": lambda: _raw(f, {"a": {**GOOD["a"], "data_offsets": [0, 4]}},
                                      b"\0" * 4),
        "overlap": lambda: _raw(f, {**GOOD, "b": {**GOOD["a"], "data_offsets": [4, 12]}},
                                b"\0" * 12),
        "gap": lambda: _raw(f, {**GOOD, "b": {**GOOD["a"], "data_offsets": [12, 20]}},
                            b"\0" * 20),
        "truncated-data": lambda: _raw(f, GOOD, b"\0" * 4),
        "trailing-data": lambda: _raw(f, GOOD, b"\0" * 12),
        "bad-metadata": lambda: _raw(f, {**GOOD, "__metadata__": {"k": 1}}, data),
    }
    builders[case]()
    with pytest.raises(SafetensorsHeaderError) as info:
        read_safetensors_header(f)
    assert expect in info.value.reason and "\n" not in str(info.value)
    assert str(info.value).startswith("x.safetensors ")


def test_missing_file_and_bound(tmp_path):
    with pytest.raises(SafetensorsHeaderError, match="cannot be read"):
        read_safetensors_header(tmp_path / "gone.safetensors")
    assert MAX_HEADER == 100 * 1024 * 1024
