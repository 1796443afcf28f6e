"""What a model folder's files say about it, and whether the installed mlx-lm can run it,
read without loading it: ``config.json``, the safetensors headers and the index of shards.

Whether mlx-lm can run a model is decided the way ``mlx_lm.utils._get_classes`` decides it
(``model_type`` through mlx-lm's remapping tables to a module in ``mlx_lm.models``), read from
the installed package's files so that ``models.catalog``'s scan does not pay for importing
mlx-lm. No MLX: any thread may ask.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.safetensors_header import SafetensorsHeaderError, read_safetensors_header
from models.fit import model_context_length

# -- what mlx-lm can run ------------------------------------------------------------------

@functools.cache
def _mlx_lm_tables() -> tuple[frozenset[str], dict[str, str], dict[tuple[str, str], str], str]:
    """(model modules, MODEL_REMAPPING, MODEL_ARCHITECTURE_REMAPPING, version) of mlx-lm."""
    spec = importlib.util.find_spec("mlx_lm")
    if spec is None or not spec.submodule_search_locations:
        return frozenset(), {}, {}, "?"
    root = Path(next(iter(spec.submodule_search_locations)))
    modules = frozenset(p.stem for p in (root / "models").glob("*.py")
                        if not p.stem.startswith("_"))
    tables: dict[str, Any] = {}
    try:
        for node in ast.parse((root / "utils.py").read_text()).body:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in (
                            "MODEL_REMAPPING", "MODEL_ARCHITECTURE_REMAPPING"):
                        tables[target.id] = ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError):
        pass
    try:
        from importlib.metadata import version

        ver = version("mlx-lm")
    except Exception:  # noqa: BLE001 - only used in a message
        ver = "?"
    return (modules, tables.get("MODEL_REMAPPING", {}),
            tables.get("MODEL_ARCHITECTURE_REMAPPING", {}), ver)


def architecture_problem(config: dict[str, Any]) -> str:
    """"" when mlx-lm has code for this config's model_type, else why not."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        return "config.json has no model_type: not a model mlx-lm can load"
    modules, remap, arch_remap, ver = _mlx_lm_tables()
    if not modules:
        return ""  # cannot tell: let the load decide
    archs = config.get("architectures") or ()
    if isinstance(archs, str):
        archs = (archs,)
    resolved = next((arch_remap[(model_type, a)] for a in archs
                     if (model_type, a) in arch_remap), remap.get(model_type, model_type))
    if resolved in modules:
        return ""
    return f"mlx-lm {ver} cannot run {model_type} models: upgrade mlx-lm or pick another model"


# -- what the files say -------------------------------------------------------------------

@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    problem: str
    size_on_disk: int
    weight_bytes: int
    num_parameters: int
    bits_per_weight: float
    quant_bits: int | None
    group_size: int | None
    context_length: int
    is_demo: bool


def _quant_settings(config: dict[str, Any]) -> dict[str, Any]:
    quant = config.get("quantization") or config.get("quantization_config")
    return quant if isinstance(quant, dict) else {}


def describe_model(path: Path) -> ModelFacts:
    """Facts about the model folder at ``path`` from its files only (no weights are read).

    Parameters and bits per weight follow mlx-lm's ``get_total_parameters`` and
    ``compute_bits_per_weight``: a quantized weight counts ``size * 32 / bits`` parameters,
    and its scales and biases count as bytes, not parameters.
    """
    path = Path(path)
    config: dict[str, Any] = {}
    problem = ""
    try:
        loaded = json.loads((path / "config.json").read_text())
        config = loaded if isinstance(loaded, dict) else {}
        if not config:
            problem = "config.json is not a JSON table: the folder is damaged"
    except (OSError, ValueError):
        problem = "config.json cannot be read: the folder is damaged; download or copy it again"
    size_on_disk = 0
    try:
        children = list(path.iterdir())
    except OSError:
        children = []
    for f in children:
        try:
            if f.is_file():
                size_on_disk += f.stat().st_size
        except OSError:
            pass
    files = sorted(path.glob("*.safetensors"))
    if not problem and not files:
        problem = "no *.safetensors weights (PyTorch or GGUF only?): not an MLX model folder"
    if not problem:
        problem = _missing_shards(path) or architecture_problem(config)
    quant = _quant_settings(config)
    default_bits = quant.get("bits") if isinstance(quant.get("bits"), int) else None
    default_group = quant.get("group_size") if isinstance(quant.get("group_size"), int) else None
    tensors: dict[str, tuple[tuple[int, ...], int]] = {}
    for f in files:
        try:
            header = read_safetensors_header(f)
        except SafetensorsHeaderError as exc:
            problem = problem or f"{f.name} is damaged: it {exc.reason}; download or copy it again"
            continue
        for name, entry in header.tensors.items():
            tensors[name] = (entry.shape, entry.nbytes)
    tied = config.get("tie_word_embeddings") is True
    weight_bytes = sum(f.stat().st_size for f in files if f.exists())
    params = 0
    total_bytes = 0
    for name, (shape, nbytes) in tensors.items():
        module, _, leaf = name.rpartition(".")
        if _dropped_on_load(name, module, tied):
            continue
        total_bytes += nbytes
        quantized = f"{module}.scales" in tensors
        if quantized and leaf in ("scales", "biases"):
            continue
        count = math.prod(shape)
        if quantized and leaf == "weight":
            override = quant.get(module)
            bits = override.get("bits") if isinstance(override, dict) else default_bits
            count = count * 32 // bits if isinstance(bits, int) and bits > 0 else count
        params += count
    return ModelFacts(
        architecture=str(config.get("model_type", "?")),
        problem=problem,
        size_on_disk=size_on_disk,
        weight_bytes=weight_bytes,
        num_parameters=params,
        bits_per_weight=round(total_bytes * 8 / params, 2) if params else 0.0,
        quant_bits=default_bits,
        group_size=default_group,
        context_length=model_context_length(config),
        is_demo="workbench_demo" in config,
    )


def _dropped_on_load(name: str, module: str, tied: bool) -> bool:
    """Tensors a checkpoint may hold that mlx-lm's ``sanitize`` drops, so the loaded model
    (and ``get_total_parameters``) never has them: rotary tables, and the output layer of a
    model whose embeddings are tied."""
    if name.endswith("rotary_emb.inv_freq"):
        return True
    return tied and module.rpartition(".")[2] == "lm_head"


def _missing_shards(path: Path) -> str:
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return ""
    try:
        weight_map = json.loads(index.read_text()).get("weight_map", {})
    except (OSError, ValueError, AttributeError):
        return "model.safetensors.index.json is damaged: download the model again"
    missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
    if missing:
        return (f"{len(missing)} weight file(s) missing ({missing[0]}...): the download is "
                "incomplete; run it again")
    return ""
