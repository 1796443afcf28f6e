"""Whether an adapter fits the loaded model, checked the way mlx-lm would wrap its layers.

``check_against_model`` answers before anything is changed: which modules mlx-lm's
``linear_to_lora_layers`` would wrap (``target_modules``), the exact parameter shapes its
wrappers expect (quantized layers included; the wrappers' arrays stay lazy, so this costs no
compute), and whether the adapter's tensors have those names and shapes. Engine thread only.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from common.errors import AdapterError

from .adapters import AdapterInfo, base_model_note


def _lora_types() -> Any:
    import mlx.nn as nn
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    return ((nn.Linear, nn.QuantizedLinear), (SwitchLinear, QuantizedSwitchLinear),
            (nn.Embedding, nn.QuantizedEmbedding))


def _wrapper_for(module: Any, info: AdapterInfo) -> Any:
    """The wrapper mlx-lm's ``linear_to_lora_layers`` would build around ``module``.

    Its adapter arrays are lazy (never evaluated), so this costs no compute: it only tells the
    exact shapes mlx-lm expects, quantized layers included.
    """
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    dora = info.fine_tune_type == "dora"
    kw: dict[str, Any] = {"r": info.rank, "scale": info.scale, "dropout": info.dropout}
    if not dora and hasattr(module, "to_lora"):
        return module.to_lora(**kw)
    linear, switch, embedding = _lora_types()
    if isinstance(module, linear):
        return (DoRALinear if dora else LoRALinear).from_base(module, **kw)
    if isinstance(module, switch):
        if dora:
            raise AdapterError(f"{info.name} is a DoRA adapter on expert (switch) layers, "
                               "which mlx-lm does not support")
        return LoRASwitchLinear.from_base(module, **kw)
    if isinstance(module, embedding):
        return (DoRAEmbedding if dora else LoRAEmbedding).from_base(module, **kw)
    raise AdapterError(f"{info.name} targets {type(module).__name__} layers, which cannot carry "
                       "a LoRA adapter")


def _is_target_type(module: Any) -> bool:
    linear, switch, embedding = _lora_types()
    return hasattr(module, "to_lora") or isinstance(module, linear + switch + embedding)


def target_modules(model: Any, info: AdapterInfo) -> dict[str, Any]:
    """The modules (by full path) that mlx-lm would wrap for this adapter's config.

    Mirrors the selection in ``mlx_lm.tuner.utils.linear_to_lora_layers``: the last
    ``num_layers`` blocks (all for -1), the config's ``keys`` relative to a block (default:
    every linear, switch or embedding layer in the blocks), plus keys naming a module from
    the model's root.
    """
    layers = list(getattr(model, "layers", []) or [])
    if not layers:
        raise AdapterError(f"{info.name}: this model has no transformer blocks mlx-lm can put "
                           "adapters on")
    if info.num_layers > len(layers):
        raise AdapterError(f"{info.name} was trained on {info.num_layers} layers and this model "
                           f"has {len(layers)}: it belongs to another model"
                           f"{_trained_on(info)}")
    names = {id(m): n for n, m in model.named_modules()}
    keys = set(info.keys)
    if not keys:
        for block in layers:
            for k, m in block.named_modules():
                if _is_target_type(m):
                    keys.add(k)
    chosen = layers[-max(info.num_layers, 0):]
    targets: dict[str, Any] = {}
    for block in chosen:
        prefix = names.get(id(block))
        if prefix is None:
            continue
        for k, m in block.named_modules():
            if k in keys:
                targets[f"{prefix}.{k}"] = m
    for k, m in model.named_modules():
        if k in keys:
            targets[k] = m
    return targets


def _trained_on(info: AdapterInfo) -> str:
    return f" (it was trained on {info.base_model})" if info.base_model else ""


def shape_text(shape: Any) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def check_against_model(info: AdapterInfo, model: Any, model_path: str,
                        model_name: str = "") -> AdapterInfo:
    """Check a files-valid adapter against the loaded model, without changing the model.

    Returns ``info`` with ``checked_against`` set, ``valid``/``reason`` updated (layer count,
    target layers, tensor names and shapes, rank) and a note when its recorded base model
    differs from the loaded one. An invalid ``info`` is returned as it is.
    """
    if not info.valid:
        return info
    label = model_name or Path(model_path).name
    info = replace(info, checked_against=label)
    try:
        _check_tensors_fit(info, model, label)
    except AdapterError as exc:
        return info.invalid(str(exc))
    note = base_model_note(info, model_path)
    if note:
        info = replace(info, notes=(*info.notes, note))
    return info


def _check_tensors_fit(info: AdapterInfo, model: Any, label: str) -> None:
    from mlx.utils import tree_flatten

    from .adapter_tensors import read_tensor_specs

    specs = read_tensor_specs(Path(info.path))
    targets = target_modules(model, info)
    if not targets:
        raise AdapterError(f"{info.name}: none of the layers its config names "
                           f"({', '.join(info.keys) or 'linear layers'}) exist in {label}: it "
                           f"belongs to another model{_trained_on(info)}")
    all_modules = dict(model.named_modules())
    expected: dict[str, dict[str, tuple[int, ...]]] = {}
    for spec in specs:
        module_path, _, leaf = spec.name.rpartition(".")
        if module_path not in targets:
            if module_path in all_modules:
                raise AdapterError(
                    f"{info.name} has weights for {module_path}, a layer its config does not "
                    f"adapt (num_layers {info.num_layers}, keys "
                    f"{', '.join(info.keys) or 'default'}): the config does not match the "
                    "weights")
            raise AdapterError(f"{info.name} has weights for {module_path}, which {label} does "
                               f"not have: it belongs to another model{_trained_on(info)}")
        if module_path not in expected:
            wrapper = _wrapper_for(targets[module_path], info)
            own: dict[str, Any] = dict(tree_flatten(wrapper.parameters()))
            expected[module_path] = {k: tuple(v.shape) for k, v in own.items() if "." not in k}
        want = expected[module_path].get(leaf)
        if want is None:
            raise AdapterError(f"{info.name} has {spec.name}, which is not a parameter of a "
                               f"{info.type_label} layer in {label}")
        if tuple(spec.shape) != want:
            raise AdapterError(f"{info.name}: {spec.name} has shape {shape_text(spec.shape)}, "
                               f"{label} needs {shape_text(want)}: the adapter belongs to another "
                               f"model{_trained_on(info)}")
