"""``--resume-adapter-file`` checked before the child starts (issue 19 #24).

mlx-lm's trainer loads the file with ``model.load_weights(file, strict=False)``: a missing or
garbage file ends the child in a traceback, and a file of another LoRA rank (or of layers the
run does not wrap) is taken without a word: the arrays replace the wrappers' own, training
goes on at the file's rank, and the adapter written at the end disagrees with its own
``adapter_config.json`` (the workbench then refuses it). So the file is read here, from its
header only, and refused in one line unless mlx-lm would resume exactly what this run trains.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from common.errors import BadSetting
from common.safetensors_header import SafetensorsHeaderError, read_safetensors_header

FLAG = "--resume-adapter-file"
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def check_resume_file(value: str, config: Any, model_layers: int | None) -> Path:
    """The resume file as an absolute path, or ``BadSetting`` saying what is wrong with it.
    ``config`` is the run's ``TrainConfig``; ``model_layers`` the model's layer count."""
    path = Path(value).expanduser().absolute()
    if path.is_dir():
        hint = " (the adapters.safetensors inside it)" if (path / "adapters.safetensors") \
            .is_file() else ""
        raise BadSetting(f"{FLAG} {value} is a folder: give the weights file{hint}")
    if not path.exists():
        raise BadSetting(f"{FLAG} {value} does not exist: give the adapters.safetensors of an "
                         "earlier run")
    if not path.is_file():
        raise BadSetting(f"{FLAG} {value} is not a regular file: give the adapters.safetensors "
                         "of an earlier run")
    try:
        header = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        raise BadSetting(f"{FLAG} {value} is not an adapter weights file: it {exc.reason}; "
                         "give the adapters.safetensors of an earlier run") from None
    if config.fine_tune_type in ("lora", "dora"):
        _check_lora(value, {n: t.shape for n, t in header.tensors.items()}, config,
                    model_layers)
    return path


def _check_lora(value: str, shapes: dict[str, tuple[int, ...]], config: Any,
                model_layers: int | None) -> None:
    """The file's LoRA tensors must be the ones this run's wrappers hold: its rank, its kind
    (DoRA's magnitudes), its layers."""
    a = {n: s for n, s in shapes.items() if n.endswith(".lora_a")}
    if not a:
        raise BadSetting(f"{FLAG} {value} holds no LoRA weights (no lora_a tensors): give the "
                         f"adapters.safetensors of an earlier {config.fine_tune_type} run")
    ranks = sorted({s[-1] for s in a.values() if s})
    rank = int(config.lora_parameters.get("rank", 8))
    if ranks != [rank]:
        shown = "/".join(map(str, ranks))
        raise BadSetting(f"{FLAG} {value} was trained at LoRA rank {shown}, this run uses rank "
                         f"{rank}: set lora_parameters rank {shown} in the -c config file, or "
                         f"start without {FLAG}")
    dora = any(n.endswith(".m") for n in shapes)
    if dora != (config.fine_tune_type == "dora"):
        kind = "dora" if dora else "lora"
        raise BadSetting(f"{FLAG} {value} is a {kind} adapter, this run trains "
                         f"{config.fine_tune_type}: give --fine-tune-type {kind}")
    _check_layers(value, a, config, model_layers)


def _check_layers(value: str, a: dict[str, tuple[int, ...]], config: Any,
                  model_layers: int | None) -> None:
    if not model_layers:
        return
    wrapped = model_layers if config.num_layers < 0 else min(config.num_layers, model_layers)
    first = model_layers - wrapped
    found = {int(m.group(1)) for n in a if (m := _LAYER.search(n))}
    outside = sorted(i for i in found if i < first or i >= model_layers)
    if outside:
        need = model_layers - min(found)
        raise BadSetting(f"{FLAG} {value} has weights for layer {outside[0]}, which this run "
                         f"does not train (--num-layers {config.num_layers}): give "
                         f"--num-layers {need}")
