"""Quantize a model folder to 4 or 8 bits with mlx-lm, with progress and a clean cancel.

``mlx_lm.convert`` does the job in one silent call. This module runs the same mlx-lm steps
(``load(lazy=True)``, the dtype cast ``convert`` applies, ``quantize_model``, ``save``) but
evaluates the quantized weights tensor by tensor first, so it can report progress in bytes
and stop between tensors. The output matches ``mlx_lm.convert``'s (a test compares them).

It is written to a hidden folder beside the destination and renamed into place at the end:
a cancelled or failed run leaves nothing that looks like a model. MLX work: run it on the
engine thread (``engine.submit(quantize_job(...))``) or in a process with no engine.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError
from common.formats import fmt_bytes
from common.repo_id import looks_like_repo_id

from .hub import cached_snapshot
from .resolve import check_model_folder

BITS = (2, 3, 4, 5, 6, 8)  # what mlx's affine quantization supports
GROUP_SIZES = (32, 64, 128)
_DTYPES = ("float16", "bfloat16", "float32")  # mlx_lm.convert.MODEL_CONVERSION_DTYPES
PROGRESS_INTERVAL_S = 0.1


class QuantizeError(WorkbenchError):
    kind = "quantize"


class QuantizeCancelled(WorkbenchError):
    kind = "cancelled"


@dataclass(frozen=True, slots=True)
class QuantizeProgress:
    """``stage`` is load, quantize, write or done; ``done``/``total`` are output bytes."""

    stage: str
    message: str
    done: int = 0
    total: int = 0

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


Progress = Callable[[QuantizeProgress], None]


def resolve_source(src: str | Path) -> Path:
    """A local model folder, or the cached snapshot of a repo id (never a download)."""
    text = str(src).strip()
    path = Path(text).expanduser()
    if not path.exists() and looks_like_repo_id(text):
        cached = cached_snapshot(text)
        if cached is None:
            raise QuantizeError(f"{text} is not in the Hugging Face cache: download it first "
                                f"with `workbench download {text}`")
        path = cached
    check_model_folder(path)
    return path.resolve()


def check_request(src: Path, dst: Path, bits: int, group_size: int) -> dict[str, Any]:
    """Refuse, with one line, what cannot work; return the source's config."""
    import json

    if bits not in BITS:
        raise QuantizeError(f"cannot quantize to {bits} bits: choose one of "
                            f"{', '.join(map(str, BITS))} (4 or 8 are the usual choices)")
    if group_size not in GROUP_SIZES:
        raise QuantizeError(f"group size {group_size} is not supported: choose one of "
                            f"{', '.join(map(str, GROUP_SIZES))} (64 is the usual choice)")
    if dst.exists():
        raise QuantizeError(f"{dst} already exists: choose a new folder for the quantized model")
    if dst.resolve().is_relative_to(src.resolve()):
        raise QuantizeError(f"{dst} is inside the source model folder: choose a folder outside "
                            "it")
    config = json.loads((src / "config.json").read_text())
    quant = config.get("quantization") or config.get("quantization_config")
    if isinstance(quant, dict) and quant:
        have = quant.get("bits", "?")
        raise QuantizeError(f"{src.name} is already quantized ({have} bits): quantize the "
                            "full-precision model instead")
    return config


def quantize(src: str | Path, dst: str | Path, bits: int = 4, group_size: int = 64, *,
             progress: Progress | None = None,
             cancel: threading.Event | None = None) -> Path:
    """Write a ``bits``-bit copy of the model ``src`` (folder or cached repo id) to ``dst``."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map_with_path
    from mlx_lm.utils import load, quantize_model, save

    say = progress or (lambda _p: None)
    source = resolve_source(src)
    target = Path(dst).expanduser()
    config = check_request(source, target, bits, group_size)

    def stop_if_cancelled() -> None:
        if cancel is not None and cancel.is_set():
            raise QuantizeCancelled(f"quantizing {source.name} cancelled: nothing was written")

    say(QuantizeProgress("load", f"reading {source.name}"))
    stop_if_cancelled()
    try:
        model, tokenizer, config = load(str(source), lazy=True, return_config=True)
    except (ValueError, FileNotFoundError) as exc:
        raise QuantizeError(f"{source.name} cannot be loaded: {_first_line(exc)}") from None
    dtype_name = config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    if dtype_name in _DTYPES:  # what mlx_lm.convert does before quantizing
        dtype = getattr(mx, dtype_name)
        cast = getattr(model, "cast_predicate", lambda _k: True)
        model.update(tree_map_with_path(
            lambda k, v: v.astype(dtype) if cast(k) and mx.issubdtype(v.dtype, mx.floating)
            else v, model.parameters()))
    say(QuantizeProgress("quantize", f"quantizing {source.name} to {bits} bits"))
    with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints an [INFO] line
        model, config = quantize_model(model, config, group_size, bits)
    weights = tree_flatten(model.parameters())
    total = sum(int(w.nbytes) for _, w in weights)
    done = 0
    last = 0.0
    for _name, w in weights:
        stop_if_cancelled()
        mx.eval(w)
        done += int(w.nbytes)
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL_S or done == total:
            last = now
            say(QuantizeProgress("quantize", f"quantized {fmt_bytes(done)} of "
                                 f"{fmt_bytes(total)}", done, total))
    del weights
    stop_if_cancelled()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial",
                                dir=target.parent))
    try:
        say(QuantizeProgress("write", f"writing {target}", done, total))
        with contextlib.redirect_stdout(io.StringIO()):
            save(tmp, source, model, tokenizer, config)
        stop_if_cancelled()
        if target.exists():
            raise QuantizeError(f"{target} appeared while quantizing: the result was not saved")
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(QuantizeProgress("done", f"{target.name}: {bits}-bit copy of {source.name} written",
                         total, total))
    return target


def quantize_job(src: str | Path, dst: str | Path, bits: int = 4,
                 group_size: int = 64) -> Callable[[Any, Callable[[Any], None],
                                                    threading.Event], Path]:
    """A function for ``Engine.submit``: quantizes on the engine thread, emitting
    QuantizeProgress events; the stream ends in ``Result(Path)`` or ``Error``."""

    def job(_core: Any, emit: Callable[[Any], None], cancel: threading.Event) -> Path:
        return quantize(src, dst, bits, group_size, progress=emit, cancel=cancel)

    return job


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
