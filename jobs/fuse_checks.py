"""What is refused before a fuse starts, from the files alone: one line that says what to
change, and nothing written.

Its own module because these checks are the fuse's rules (a new or empty save folder outside
the model and the adapter, an adapter that fits the model, GGUF only where mlx-lm can export
it), apart from running the child process (``fuse.py``). ``check_request`` is all of them,
in the order ``FuseJob.start`` runs them; the child checks names and shapes against the
loaded model as well. Nothing here imports MLX, textual, rich or prompt_toolkit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError
from engine.adapters import inspect_adapter

GGUF_MODEL_TYPES = ("llama", "mixtral", "mistral")  # mlx_lm/fuse.py's list


class FuseError(WorkbenchError):
    """A fuse that cannot start: one line that says what to change. Nothing was written."""

    kind = "fuse"


def _read_model_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FuseError(f"{path}/config.json cannot be read ({exc}): is it a model folder?") \
            from None
    if not isinstance(config, dict):
        raise FuseError(f"{path}/config.json is not a JSON object: is it a model folder?")
    return config


def _quantized(config: dict[str, Any]) -> bool:
    quant = config.get("quantization") or config.get("quantization_config")
    return isinstance(quant, dict) and bool(quant)


def check_save_path(save: Path, model: Path, adapter: Path) -> None:
    """Refuse a save path that holds anything, is a file, or lies inside the model or the
    adapter folder."""
    if save.is_symlink():
        raise FuseError(f"{save} is a symbolic link: give a new or empty folder to save the "
                        "fused model in")
    if save.exists():
        if not save.is_dir():
            raise FuseError(f"{save} is a file: give a new or empty folder to save the fused "
                            "model in (nothing was changed)")
        try:
            empty = next(save.iterdir(), None) is None
        except OSError as exc:
            raise FuseError(f"{save} cannot be read ({exc.strerror or exc})") from None
        if not empty:
            raise FuseError(f"{save} is not empty: give a new or empty folder to save the "
                            "fused model in (nothing was changed)")
    resolved = save.resolve()
    for inside, what in ((model, "the model"), (adapter, "the adapter")):
        if resolved == inside.resolve() or resolved.is_relative_to(inside.resolve()):
            raise FuseError(f"{save} is inside {what} folder {inside}: choose a folder outside "
                            "it")


def check_adapter_for(adapter: Path, model: Path, config: dict[str, Any]) -> None:
    """Refuse, from the files alone, an adapter that cannot be fused into this model (the
    child checks names and shapes against the loaded model as well)."""
    info = inspect_adapter(adapter)
    if not info.valid:
        raise FuseError(info.reason)
    layers = config.get("num_hidden_layers")
    if isinstance(layers, int) and info.layers and max(info.layers) >= layers:
        raise FuseError(f"{info.name} adapts layer {max(info.layers)} but {model.name} has "
                        f"{layers} layers: it belongs to another model")
    if isinstance(layers, int) and info.num_layers > layers:
        raise FuseError(f"{info.name} was made for {info.num_layers} layers but {model.name} "
                        f"has {layers}: it belongs to another model")


def gguf_target(save: Path, gguf_path: str) -> Path:
    """Where mlx-lm writes the GGUF file: ``save / gguf_path`` (an absolute path stays)."""
    return save / gguf_path


def check_request(model_spec: str, adapter_path: str, save_path: str, *, dequantize: bool,
                  export_gguf: bool, gguf_path: str) -> tuple[Path, Path, Path, Path | None]:
    """Every check of a fuse request, in order: the model folder, the adapter, the save path
    and (with ``export_gguf``) the GGUF export. Gives the model, adapter and save folders and,
    where the GGUF file is to be written outside the save folder, that file (else None)."""
    from models.quantize import resolve_source

    try:
        model = resolve_source(model_spec)
    except WorkbenchError as exc:
        raise FuseError(str(exc)) from None
    adapter = Path(adapter_path).expanduser().absolute()
    if not adapter.exists():
        raise FuseError(f"no such adapter folder: {adapter}: give the folder that holds "
                        "adapter_config.json and adapters.safetensors")
    config = _read_model_config(model)
    check_adapter_for(adapter, model, config)
    save = Path(save_path).expanduser().absolute()
    check_save_path(save, model, adapter)
    gguf_outside: Path | None = None
    if export_gguf:
        kind = config.get("model_type")
        if kind not in GGUF_MODEL_TYPES:
            raise FuseError(f"mlx-lm exports GGUF for {', '.join(GGUF_MODEL_TYPES)} models "
                            f"only, and {model.name} is a {kind} model: fuse without "
                            "--export-gguf")
        if _quantized(config) and not dequantize:
            raise FuseError(f"{model.name} is quantized and mlx-lm exports GGUF from "
                            "full-precision weights only: add --dequantize")
        gguf = gguf_target(save, gguf_path)
        if not gguf.resolve().is_relative_to(save.resolve()):
            if gguf.exists() or gguf.is_symlink():
                raise FuseError(f"{gguf} already exists: give another --gguf-path (it was "
                                "left as it is)")
            if not gguf.parent.is_dir():
                raise FuseError(f"cannot write {gguf}: the folder {gguf.parent} does not "
                                "exist")
            gguf_outside = gguf
    return model, adapter, save, gguf_outside
