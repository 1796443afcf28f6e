"""The tensors of ``adapters.safetensors``: read from the header, then checked for what MLX
cannot use (integer dtypes, NaN or infinite values).

``engine.adapters`` describes an adapter folder and checks its config; this module is the
part that reads the weights file (the header, and once per file version the tensor bytes,
with numpy, never MLX), so that any thread may run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import AdapterError
from common.safetensors_header import (
    SafetensorsHeader,
    SafetensorsHeaderError,
    read_safetensors_header,
)

WEIGHTS_FILE = "adapters.safetensors"
# The dtypes mlx-lm trains and loads adapters in; and how to find NaN/Inf in each: view the
# raw little-endian bits as unsigned integers, an all-ones exponent is NaN or infinity.
_FLOAT_BITS = {"F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80)}
_INTEGER_DTYPES = frozenset({"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of ``adapters.safetensors``, from the file header."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class Unusable(Exception):
    """Internal: a one-line reason an adapter folder cannot be used."""


def read_tensor_specs(path: Path) -> list[TensorSpec]:
    """Names, shapes and dtypes of ``path/adapters.safetensors`` from its header only.

    Raises a one-line ``AdapterError`` when the file is missing or damaged (a truncated,
    empty or garbage file fails here: the header must cover the whole file).
    """
    try:
        return _read_tensor_specs(path)
    except Unusable as exc:
        raise AdapterError(str(exc)) from None


def read_header(path: Path) -> SafetensorsHeader:
    """The header of ``path/adapters.safetensors``, or ``Unusable`` saying what is wrong."""
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise Unusable(f"{path.name} has no {WEIGHTS_FILE}: the adapter is incomplete (copy or "
                       "train it again)")
    try:
        return read_safetensors_header(file)
    except SafetensorsHeaderError as exc:
        raise Unusable(f"{path.name}/{WEIGHTS_FILE} is damaged: it {exc.reason}; copy or "
                       "train the adapter again") from None


def _read_tensor_specs(path: Path) -> list[TensorSpec]:
    return tensor_specs(path, read_header(path))


def tensor_specs(path: Path, header: SafetensorsHeader) -> list[TensorSpec]:
    """The tensors ``header`` lists; ``Unusable`` when there are none."""
    specs = [TensorSpec(t.name, t.shape, t.dtype) for t in header.tensors.values()]
    if not specs:
        raise Unusable(f"{path.name}/{WEIGHTS_FILE} holds no tensors: copy or train the "
                       "adapter again")
    return specs


def check_dtypes(path: Path, specs: list[TensorSpec]) -> None:
    """LoRA/DoRA weights are floating point in a dtype MLX computes in (F32, F16, BF16)."""
    for spec in specs:
        if spec.dtype in _FLOAT_BITS:
            continue
        if spec.dtype in _INTEGER_DTYPES:
            raise Unusable(f"{path.name}: {spec.name} holds integers ({spec.dtype}), not "
                           "trained weights: LoRA tensors are float32, float16 or bfloat16; "
                           "copy or train the adapter again")
        raise Unusable(f"{path.name}: {spec.name} is {spec.dtype}, which adapters cannot use: "
                       "LoRA tensors are float32, float16 or bfloat16; save it in one of "
                       "those")


def check_values(path: Path, header: SafetensorsHeader) -> None:
    """Every value finite: a NaN or infinity anywhere makes every reply garbage.

    Reads the tensor bytes once per file version (cached by path, size, mtime)."""
    import numpy as np

    file = path / WEIGHTS_FILE
    stat = file.stat()
    key = (str(file), stat.st_size, stat.st_mtime_ns)
    known = _value_checks.get(key)
    if known is None:
        known = ""
        with file.open("rb") as fh:
            for entry in sorted(header.tensors.values(), key=lambda e: e.start):
                view, exponent = _FLOAT_BITS[entry.dtype]
                fh.seek(header.data_start + entry.start)
                raw = fh.read(entry.nbytes)
                if len(raw) != entry.nbytes:
                    known = (f"{path.name}/{WEIGHTS_FILE} is damaged (it ends inside "
                             f"{entry.name}): copy or train the adapter again")
                    break
                bits = np.frombuffer(raw, dtype=view)
                bad = int(np.count_nonzero((bits & exponent) == exponent))
                if bad:
                    known = (f"{path.name}: {entry.name} holds {bad} NaN or infinite "
                             f"value{'s' if bad > 1 else ''} of {entry.count}: the training "
                             "diverged or the file is damaged; train it again (a lower "
                             "learning rate?) or pick another checkpoint")
                    break
        if len(_value_checks) > 256:
            _value_checks.clear()
        _value_checks[key] = known
    if known:
        raise Unusable(known)


_value_checks: dict[tuple[str, int, int], str] = {}
