"""LoRA/DoRA adapter folders on disk: find them, describe them, check them without a model.

An adapter is a folder written by ``mlx_lm lora``: ``adapter_config.json`` plus
``adapters.safetensors``. Everything here reads files only, with the standard library and
numpy (never MLX), so listing a folder of adapters is cheap and safe to do on any thread: the
config, the safetensors header, and once per file version the tensor bytes, to refuse
integer tensors and NaN/Inf values (an adapter is a few MB; the result is cached by path,
size and modification time; the weights file is read in ``engine.adapter_tensors``).
Checking an adapter against the loaded model, preparing it and swapping it in live in
``engine.adapter_swap`` and run on the engine thread.

Nothing here raises for a bad adapter: ``inspect_adapter`` returns an ``AdapterInfo`` with
``valid=False`` and a one-line ``reason``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from models.resolve import same_location

from .adapter_tensors import (
    WEIGHTS_FILE,
    TensorSpec,
    Unusable,
    check_dtypes,
    check_values,
    read_header,
    tensor_specs,
)

CONFIG_FILE = "adapter_config.json"
ADAPTER_LEAVES = ("lora_a", "lora_b", "m")
SUPPORTED_TYPES = ("lora", "dora")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_QUANT_SUFFIX = re.compile(r"([-_](\d+bit|bf16|fp16|f16|f32|float16|bfloat16|mlx|q\d))+$")


@dataclass(frozen=True)
class AdapterInfo:
    """What the workbench knows about one adapter folder (one row of the Adapters pane).

    ``valid`` is False when the adapter cannot be used; ``reason`` then says why in one line.
    ``notes`` are things worth knowing that do not stop it (e.g. it was trained on another
    base model). ``checked_against`` names the model it was checked against ("" when only
    its files were read). ``keys`` empty means mlx-lm's default: every linear layer.
    ``num_layers`` is the count from the config (-1 = all layers); ``layers`` lists the layer
    indices its tensors touch. ``scale`` is the trained LoRA scale from the config.
    """

    path: str
    name: str
    valid: bool
    reason: str = ""
    fine_tune_type: str = ""
    rank: int = 0
    scale: float = 0.0
    dropout: float = 0.0
    num_layers: int = 0
    keys: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    num_tensors: int = 0
    num_parameters: int = 0
    size_bytes: int = 0
    base_model: str = ""
    notes: tuple[str, ...] = ()
    checked_against: str = ""
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def type_label(self) -> str:
        """``LoRA`` / ``DoRA`` (or the raw type) for display."""
        return {"lora": "LoRA", "dora": "DoRA"}.get(self.fine_tune_type,
                                                    self.fine_tune_type or "?")

    @property
    def layers_label(self) -> str:
        """The layers it touches, for display: ``2-3``, ``0-3``, ``1,3`` or ``all``."""
        if not self.layers:
            return "all" if self.num_layers == -1 else (str(self.num_layers) or "?")
        lo, hi = self.layers[0], self.layers[-1]
        if list(self.layers) == list(range(lo, hi + 1)):
            return f"{lo}-{hi}" if hi > lo else str(lo)
        return ",".join(str(i) for i in self.layers)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keys"] = list(self.keys)
        data["layers"] = list(self.layers)
        data["notes"] = list(self.notes)
        return data

    def invalid(self, reason: str) -> AdapterInfo:
        return replace(self, valid=False, reason=reason)


def adapter_name(path: Path) -> str:
    """The display name of an adapter: its folder name."""
    return path.name or str(path)


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("model*.safetensors"))


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise Unusable(f"no adapter folder at {path}: give a folder that holds {CONFIG_FILE} "
                       f"and {WEIGHTS_FILE}")
    if not path.is_dir():
        if path.name in (CONFIG_FILE, WEIGHTS_FILE):
            raise Unusable(f"{path} is a file: give the folder that holds it ({path.parent})")
        raise Unusable(f"{path} is a file, not an adapter folder: give a folder that holds "
                       f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        if _is_model_folder(path):
            raise Unusable(f"{path.name} is a full model, not an adapter: load it as a model "
                           "(--model)")
        raise Unusable(f"{path} has no {CONFIG_FILE}: it is not an mlx-lm adapter folder")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unusable(f"{path.name}/{CONFIG_FILE} cannot be read ({detail}): copy or train "
                       "the adapter again") from None
    if not isinstance(config, dict):
        raise Unusable(f"{path.name}/{CONFIG_FILE} is not a JSON object: it is not an mlx-lm "
                       "adapter config")
    return config


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


def _check_config(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Return the normalised fields of a LoRA/DoRA config, or raise ``Unusable``."""
    name = path.name
    kind = config.get("fine_tune_type", "lora")
    if kind == "full":
        raise Unusable(f"{name} is a full model, not an adapter (fine_tune_type full replaces "
                       "every weight, so it cannot be swapped): use it with mlx_lm "
                       "--adapter-path, or fuse it into a model with mlx_lm fuse")
    if kind not in SUPPORTED_TYPES:
        raise Unusable(f"{name} has fine_tune_type {kind!r}: the workbench can swap lora and "
                       "dora adapters only")
    num_layers = config.get("num_layers")
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or \
            (num_layers < 1 and num_layers != -1):
        raise Unusable(f"{name}/{CONFIG_FILE} needs num_layers (a whole number of layers, or "
                       f"-1 for all), not {num_layers!r}")
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise Unusable(f"{name}/{CONFIG_FILE} has no lora_parameters: it is incomplete")
    rank = params.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise Unusable(f"{name}/{CONFIG_FILE}: lora_parameters.rank must be a whole number "
                       f"of at least 1, not {rank!r}")
    if "scale" not in params:
        hint = " (it has 'alpha': mlx-lm uses 'scale')" if "alpha" in params else ""
        raise Unusable(f"{name}/{CONFIG_FILE}: lora_parameters has no scale{hint}")
    scale: Any = params.get("scale")
    if not _number(scale):
        raise Unusable(f"{name}/{CONFIG_FILE}: lora_parameters.scale must be a number, "
                       f"not {scale!r}")
    dropout: Any = params.get("dropout")
    if not _number(dropout) or not 0 <= dropout < 1:
        raise Unusable(f"{name}/{CONFIG_FILE}: lora_parameters.dropout must be a number from "
                       f"0 to below 1, not {dropout!r}")
    keys = params.get("keys")
    if keys is not None and (not isinstance(keys, list)
                             or not all(isinstance(k, str) and k for k in keys)):
        raise Unusable(f"{name}/{CONFIG_FILE}: lora_parameters.keys must be a list of layer "
                       "names such as self_attn.q_proj")
    return {"fine_tune_type": kind, "num_layers": num_layers, "rank": rank,
            "scale": float(scale), "dropout": float(dropout), "keys": tuple(keys or ())}


def _check_tensors(path: Path, fields: dict[str, Any], specs: list[TensorSpec]) -> None:
    """Tensor names and ranks that the config alone can check."""
    name = path.name
    rank = fields["rank"]
    is_dora = fields["fine_tune_type"] == "dora"
    modules: dict[str, set[str]] = {}
    for spec in specs:
        module, _, leaf = spec.name.rpartition(".")
        if leaf not in ADAPTER_LEAVES or not module or (leaf == "m" and not is_dora):
            raise Unusable(f"{name} holds {spec.name}, which is not a "
                           f"{'DoRA' if is_dora else 'LoRA'} parameter: it is not a "
                           f"{fields['fine_tune_type']} adapter (a full fine-tune?)")
        modules.setdefault(module, set()).add(leaf)
        if leaf == "lora_b" and spec.shape and len(spec.shape) >= 2:
            found = spec.shape[-1] if len(spec.shape) == 3 else spec.shape[0]
            if found != rank:
                raise Unusable(f"{name}: {spec.name} has rank {found} but {CONFIG_FILE} says "
                               f"rank {rank}: the config does not belong to these weights")
    for module, leaves in sorted(modules.items()):
        if "lora_b" in leaves and "lora_a" not in leaves:
            raise Unusable(f"{name} has {module}.lora_b without its lora_a: the adapter is "
                           "incomplete")


def _layers(specs: Iterable[TensorSpec]) -> tuple[int, ...]:
    found = set()
    for spec in specs:
        match = _LAYER_INDEX.search(spec.name)
        if match:
            found.add(int(match.group(1)))
    return tuple(sorted(found))


def _base_model(config: dict[str, Any]) -> str:
    base = config.get("model") or config.get("base_model") or ""
    return str(base) if isinstance(base, str) else ""


def inspect_adapter(path: str | Path) -> AdapterInfo:
    """Describe the adapter folder at ``path`` from its files alone. Never raises for a bad
    folder: the result has ``valid=False`` and a one-line ``reason`` instead."""
    path = Path(path).expanduser()
    with contextlib.suppress(OSError):
        path = path.resolve()
    info = AdapterInfo(path=str(path), name=adapter_name(path), valid=True)
    try:
        config = _read_config(path)
        info = replace(info, config=config, base_model=_base_model(config),
                       fine_tune_type=str(config.get("fine_tune_type", "lora")))
        fields = _check_config(path, config)
        info = replace(info, fine_tune_type=fields["fine_tune_type"], rank=fields["rank"],
                       scale=fields["scale"], dropout=fields["dropout"],
                       num_layers=fields["num_layers"], keys=fields["keys"])
        header = read_header(path)
        specs = tensor_specs(path, header)
        info = replace(
            info, num_tensors=len(specs), layers=_layers(specs),
            num_parameters=sum(math.prod(s.shape) for s in specs),
            size_bytes=header.file_bytes,
        )
        _check_tensors(path, fields, specs)
        check_dtypes(path, specs)
        check_values(path, header)
    except Unusable as exc:
        return info.invalid(str(exc))
    except OSError as exc:  # unreadable folder, permissions
        return info.invalid(f"{path} cannot be read ({exc.strerror or exc}): check the folder")
    return info


def _looks_like_candidate(path: Path) -> bool:
    if path.name.startswith(".") or not path.is_dir():
        return False
    return ((path / CONFIG_FILE).exists() or (path / WEIGHTS_FILE).exists()
            or (path / "config.json").exists())


def discover_adapters(dirs: Iterable[str | Path] = (),
                      extra_paths: Iterable[str | Path] = ()) -> tuple[list[Path], list[str]]:
    """Adapter folders to list, and one-line problems with the folders given.

    ``dirs`` are folders of adapter folders (``--adapters DIR``, the config's adapters
    folder): each sub-folder holding an adapter config, adapter weights or a model config is
    listed (so a full model dropped there is listed as invalid, with its reason); a folder that
    is itself an adapter is listed too; a missing folder is skipped with a problem line.
    ``extra_paths`` (``--adapter PATH``) are always listed, even when invalid. Each folder is
    listed once, in the order found (sorted by name within a folder).
    """
    found: list[Path] = []
    seen: set[Path] = set()
    problems: list[str] = []

    def add(p: Path) -> None:
        try:
            key = p.resolve()
        except OSError:
            key = p
        if key not in seen:
            seen.add(key)
            found.append(key)

    for d in dirs:
        folder = Path(d).expanduser()
        if not folder.is_dir():
            problems.append(f"adapters folder {folder} does not exist: create it or give "
                            "another with --adapters")
            continue
        if (folder / CONFIG_FILE).exists():
            add(folder)
            continue
        try:
            children = sorted(folder.iterdir(), key=lambda p: p.name.lower())
        except OSError as exc:
            problems.append(f"adapters folder {folder} cannot be read ({exc.strerror or exc})")
            continue
        for child in children:
            if _looks_like_candidate(child):
                add(child)
    for p in extra_paths:
        add(Path(p).expanduser())
    return found, problems


def model_label(path: str) -> str:
    """A comparable name for a model path or repo id: last part, lower case, without
    quantization suffixes (``Qwen3-0.6B-4bit`` and ``qwen3-0.6b`` compare equal)."""
    last = path.rstrip("/").rsplit("/", 1)[-1].lower()
    return _QUANT_SUFFIX.sub("", last) or last


def base_model_note(info: AdapterInfo, loaded_path: str) -> str | None:
    """A note when the adapter records a base model other than the loaded one, else None."""
    if not info.base_model:
        return None
    recorded = info.base_model
    if Path(recorded).expanduser().exists() and same_location(recorded, loaded_path):
        return None
    if model_label(recorded) == model_label(loaded_path):
        return None
    return (f"trained on {recorded}, loaded model is {Path(loaded_path).name}: the shapes fit, "
            "but the replies may not be what it was trained for")


def content_digest(path: Path, config: dict[str, Any]) -> str:
    """A sha256 over what decides the adapter's output: its LoRA settings and its weights.

    Cached by (path, size, modification time), so asking again is free.
    """
    weights = path / WEIGHTS_FILE
    stat = weights.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns,
           json.dumps(config, sort_keys=True, default=str))
    hit = _digests.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    relevant = {k: config.get(k) for k in ("fine_tune_type", "num_layers", "lora_parameters")}
    h.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    _digests[key] = digest
    return digest


_digests: dict[tuple[str, int, int, str], str] = {}
