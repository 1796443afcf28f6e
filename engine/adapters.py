"""LoRA/DoRA adapter folders on disk: find them, describe them, check them without a model.

An adapter is a folder written by ``mlx_lm lora``: ``adapter_config.json`` plus
``adapters.safetensors``. Everything here reads files only, with the standard library and
numpy (never MLX), so listing a folder of adapters is cheap and safe to do on any thread: the
config, the safetensors header, and once per file version the tensor bytes, to refuse
integer tensors and NaN/Inf values (an adapter is a few MB; the result is cached by path,
size and modification time). Checking an adapter against the loaded model, preparing it
and swapping it in live in ``engine.adapter_swap`` and run on the engine thread.

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
from models.safetensors_header import (
    SafetensorsHeader,
    SafetensorsHeaderError,
    read_safetensors_header,
)

from .errors import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
ADAPTER_LEAVES = ("lora_a", "lora_b", "m")
SUPPORTED_TYPES = ("lora", "dora")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_QUANT_SUFFIX = re.compile(r"([-_](\d+bit|bf16|fp16|f16|f32|float16|bfloat16|mlx|q\d))+$")
# The dtypes mlx-lm trains and loads adapters in; and how to find NaN/Inf in each: view the
# raw little-endian bits as unsigned integers, an all-ones exponent is NaN or infinity.
_FLOAT_BITS = {"F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00), "BF16": ("<u2", 0x7F80)}
_INTEGER_DTYPES = frozenset({"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64"})


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


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of ``adapters.safetensors``, from the file header."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class _Problem(Exception):
    """Internal: a one-line reason an adapter folder cannot be used."""


def adapter_name(path: Path) -> str:
    """The display name of an adapter: its folder name."""
    return path.name or str(path)


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("model*.safetensors"))


def _read_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise _Problem(f"no adapter folder at {path}: give a folder that holds {CONFIG_FILE} "
                       f"and {WEIGHTS_FILE}")
    if not path.is_dir():
        if path.name in (CONFIG_FILE, WEIGHTS_FILE):
            raise _Problem(f"{path} is a file: give the folder that holds it ({path.parent})")
        raise _Problem(f"{path} is a file, not an adapter folder: give a folder that holds "
                       f"{CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        if _is_model_folder(path):
            raise _Problem(f"{path.name} is a full model, not an adapter: load it as a model "
                           "(--model)")
        raise _Problem(f"{path} has no {CONFIG_FILE}: it is not an mlx-lm adapter folder")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _Problem(f"{path.name}/{CONFIG_FILE} cannot be read ({detail}): copy or train "
                       "the adapter again") from None
    if not isinstance(config, dict):
        raise _Problem(f"{path.name}/{CONFIG_FILE} is not a JSON object: it is not an mlx-lm "
                       "adapter config")
    return config


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)


def _check_config(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Return the normalised fields of a LoRA/DoRA config, or raise ``_Problem``."""
    name = path.name
    kind = config.get("fine_tune_type", "lora")
    if kind == "full":
        raise _Problem(f"{name} is a full model, not an adapter (fine_tune_type full replaces "
                       "every weight, so it cannot be swapped): use it with mlx_lm "
                       "--adapter-path, or fuse it into a model with mlx_lm fuse")
    if kind not in SUPPORTED_TYPES:
        raise _Problem(f"{name} has fine_tune_type {kind!r}: the workbench can swap lora and "
                       "dora adapters only")
    num_layers = config.get("num_layers")
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or \
            (num_layers < 1 and num_layers != -1):
        raise _Problem(f"{name}/{CONFIG_FILE} needs num_layers (a whole number of layers, or "
                       f"-1 for all), not {num_layers!r}")
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise _Problem(f"{name}/{CONFIG_FILE} has no lora_parameters: it is incomplete")
    rank = params.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise _Problem(f"{name}/{CONFIG_FILE}: lora_parameters.rank must be a whole number "
                       f"of at least 1, not {rank!r}")
    if "scale" not in params:
        hint = " (it has 'alpha': mlx-lm uses 'scale')" if "alpha" in params else ""
        raise _Problem(f"{name}/{CONFIG_FILE}: lora_parameters has no scale{hint}")
    scale: Any = params.get("scale")
    if not _number(scale):
        raise _Problem(f"{name}/{CONFIG_FILE}: lora_parameters.scale must be a number, "
                       f"not {scale!r}")
    dropout: Any = params.get("dropout")
    if not _number(dropout) or not 0 <= dropout < 1:
        raise _Problem(f"{name}/{CONFIG_FILE}: lora_parameters.dropout must be a number from "
                       f"0 to below 1, not {dropout!r}")
    keys = params.get("keys")
    if keys is not None and (not isinstance(keys, list)
                             or not all(isinstance(k, str) and k for k in keys)):
        raise _Problem(f"{name}/{CONFIG_FILE}: lora_parameters.keys must be a list of layer "
                       "names such as self_attn.q_proj")
    return {"fine_tune_type": kind, "num_layers": num_layers, "rank": rank,
            "scale": float(scale), "dropout": float(dropout), "keys": tuple(keys or ())}


def read_tensor_specs(path: Path) -> list[TensorSpec]:
    """Names, shapes and dtypes of ``path/adapters.safetensors`` from its header only.

    Raises a one-line ``AdapterError`` when the file is missing or damaged (a truncated,
    empty or garbage file fails here: the header must cover the whole file).
    """
    try:
        return _read_tensor_specs(path)
    except _Problem as exc:
        raise AdapterError(str(exc)) from None


def _read_header(path: Path) -> SafetensorsHeader:
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise _Problem(f"{path.name} has no {WEIGHTS_FILE}: the adapter is incomplete (copy or "
                       "train it again)")
    try:
        return read_safetensors_header(file)
    except SafetensorsHeaderError as exc:
        raise _Problem(f"{path.name}/{WEIGHTS_FILE} is damaged: it {exc.reason}; copy or "
                       "train the adapter again") from None


def _read_tensor_specs(path: Path) -> list[TensorSpec]:
    return _specs(path, _read_header(path))


def _specs(path: Path, header: SafetensorsHeader) -> list[TensorSpec]:
    specs = [TensorSpec(t.name, t.shape, t.dtype) for t in header.tensors.values()]
    if not specs:
        raise _Problem(f"{path.name}/{WEIGHTS_FILE} holds no tensors: copy or train the "
                       "adapter again")
    return specs


def _check_dtypes(path: Path, specs: list[TensorSpec]) -> None:
    """LoRA/DoRA weights are floating point in a dtype MLX computes in (F32, F16, BF16)."""
    for spec in specs:
        if spec.dtype in _FLOAT_BITS:
            continue
        if spec.dtype in _INTEGER_DTYPES:
            raise _Problem(f"{path.name}: {spec.name} holds integers ({spec.dtype}), not "
                           "trained weights: LoRA tensors are float32, float16 or bfloat16; "
                           "copy or train the adapter again")
        raise _Problem(f"{path.name}: {spec.name} is {spec.dtype}, which adapters cannot use: "
                       "LoRA tensors are float32, float16 or bfloat16; save it in one of "
                       "those")


def _check_values(path: Path, header: SafetensorsHeader) -> None:
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
        raise _Problem(known)


_value_checks: dict[tuple[str, int, int], str] = {}


def _check_tensors(path: Path, fields: dict[str, Any], specs: list[TensorSpec]) -> None:
    """Tensor names and ranks that the config alone can check."""
    name = path.name
    rank = fields["rank"]
    is_dora = fields["fine_tune_type"] == "dora"
    modules: dict[str, set[str]] = {}
    for spec in specs:
        module, _, leaf = spec.name.rpartition(".")
        if leaf not in ADAPTER_LEAVES or not module or (leaf == "m" and not is_dora):
            raise _Problem(f"{name} holds {spec.name}, which is not a "
                           f"{'DoRA' if is_dora else 'LoRA'} parameter: it is not a "
                           f"{fields['fine_tune_type']} adapter (a full fine-tune?)")
        modules.setdefault(module, set()).add(leaf)
        if leaf == "lora_b" and spec.shape and len(spec.shape) >= 2:
            found = spec.shape[-1] if len(spec.shape) == 3 else spec.shape[0]
            if found != rank:
                raise _Problem(f"{name}: {spec.name} has rank {found} but {CONFIG_FILE} says "
                               f"rank {rank}: the config does not belong to these weights")
    for module, leaves in sorted(modules.items()):
        if "lora_b" in leaves and "lora_a" not in leaves:
            raise _Problem(f"{name} has {module}.lora_b without its lora_a: the adapter is "
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
        header = _read_header(path)
        specs = _specs(path, header)
        info = replace(
            info, num_tensors=len(specs), layers=_layers(specs),
            num_parameters=sum(math.prod(s.shape) for s in specs),
            size_bytes=header.file_bytes,
        )
        _check_tensors(path, fields, specs)
        _check_dtypes(path, specs)
        _check_values(path, header)
    except _Problem as exc:
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
