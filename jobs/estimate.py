"""Will a training run fit in memory? An estimate from the model's config.json and the
settings, made before anything is loaded (no MLX: any thread may ask), checked the way
``engine.memory.check_fit`` checks a model load.

Need = weights (the files) + trainable parameters + their gradients + the optimizer's state
+ activations kept for the backward pass (batch x sequence, in the trained layers only; one
layer's with gradient checkpointing) + the logits and their gradient + MLX's buffers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import formats
from common.errors import ModelTooBig
from models import fit

# Copies of the trainable parameters the optimizer keeps (Adam: first and second moments).
OPTIMIZER_STATES = {"adam": 2.0, "adamw": 2.0, "muon": 1.0, "sgd": 0.0, "adafactor": 1.0}


class TrainTooBig(ModelTooBig):
    """The run cannot fit in the memory that is free: the numbers, and what to change."""

    kind = "too-big"


def available_memory() -> int:
    """What the run can count on: the system's free memory (no MLX call, any thread)."""
    return fit.system_available_memory()


@dataclass(frozen=True)
class TrainEstimate:
    name: str
    fine_tune_type: str
    batch_size: int
    sequence: int  # tokens per example in the estimate (the longest, padded as mlx-lm pads)
    weights: int
    trainable_parameters: int
    trainable: int  # bytes of the trainable parameters
    gradients: int
    optimizer_state: int
    activations: int
    overhead: int
    available: int
    optimizer: str

    @property
    def need(self) -> int:
        return (self.weights + self.trainable + self.gradients + self.optimizer_state
                + self.activations + self.overhead)

    @property
    def verdict(self) -> str:
        if self.need > self.available:
            return "too-big"
        if self.need > fit.TIGHT_FRACTION * self.available:
            return "tight"
        return "fits"

    def message(self) -> str:
        gb = formats.fmt_bytes
        parts = (f"training {self.name} ({self.fine_tune_type}, batch {self.batch_size} x "
                 f"{self.sequence} tokens) needs about {gb(self.need)} (weights "
                 f"{gb(self.weights)}, trainable {gb(self.trainable)} + gradients and "
                 f"{self.optimizer} state {gb(self.gradients + self.optimizer_state)}, "
                 f"activations {gb(self.activations)})")
        if self.verdict == "too-big":
            return (f"{parts} but only {gb(self.available)} is free: lower --batch-size or "
                    "--max-seq-length, add --grad-checkpoint, train fewer layers "
                    "(--num-layers), or use a smaller or quantized model")
        if self.verdict == "tight":
            return f"{parts} of the {gb(self.available)} free: it fits, but only just"
        return f"{parts}; {gb(self.available)} is free"


def _num(cfg: dict[str, Any], key: str, default: int) -> int:
    value = cfg.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
        else default


def block_linears(cfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) of the linear layers of one transformer block, llama-style names."""
    hidden = _num(cfg, "hidden_size", 0)
    heads = _num(cfg, "num_attention_heads", 1)
    kv = _num(cfg, "num_key_value_heads", heads)
    head_dim = _num(cfg, "head_dim", hidden // max(heads, 1))
    inter = _num(cfg, "intermediate_size", 4 * hidden)
    return {"self_attn.q_proj": (hidden, heads * head_dim),
            "self_attn.k_proj": (hidden, kv * head_dim),
            "self_attn.v_proj": (hidden, kv * head_dim),
            "self_attn.o_proj": (heads * head_dim, hidden),
            "mlp.gate_proj": (hidden, inter), "mlp.up_proj": (hidden, inter),
            "mlp.down_proj": (inter, hidden)}


def model_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    text = config.get("text_config")
    return {**config, **text} if isinstance(text, dict) else config


def trainable_parameters(cfg: dict[str, Any], fine_tune_type: str, num_layers: int,
                         lora_parameters: dict[str, Any] | None) -> int:
    """Parameters mlx-lm will train: LoRA's A and B (DoRA adds a magnitude per output) on the
    chosen projections of the last ``num_layers`` blocks, or those blocks whole."""
    layers = _num(cfg, "num_hidden_layers", 0)
    trained = layers if num_layers == -1 else min(num_layers, layers)
    linears = block_linears(cfg)
    hidden = _num(cfg, "hidden_size", 0)
    if fine_tune_type == "full":
        return trained * (sum(i * o for i, o in linears.values()) + 2 * hidden)
    lp = lora_parameters or {}
    rank = int(lp.get("rank", 8))
    keys = lp.get("keys") or list(linears)
    total = 0
    for key in keys:
        i, o = linears.get(key, (hidden, hidden))
        total += rank * (i + o) + (o if fine_tune_type == "dora" else 0)
    return trained * total


def padded(tokens: int, max_seq_length: int) -> int:
    """The batch width mlx-lm's ``iterate_batches`` uses for a longest record of ``tokens``."""
    return min(1 + 32 * ((tokens + 31) // 32), max_seq_length)


def estimate(path: Path, *, fine_tune_type: str, num_layers: int, batch_size: int,
             sequence: int, lora_parameters: dict[str, Any] | None, optimizer: str,
             grad_checkpoint: bool, available: int | None = None, name: str | None = None
             ) -> TrainEstimate:
    cfg = model_config(path)
    weights = sum(f.stat().st_size for f in fit.weight_files(path))
    n_trainable = trainable_parameters(cfg, fine_tune_type, num_layers, lora_parameters)
    dtype = str(cfg.get("torch_dtype", "bfloat16"))
    model_bytes = 4 if dtype == "float32" else 2
    per_param = model_bytes if fine_tune_type == "full" else 4  # LoRA weights are float32
    trainable = n_trainable * per_param
    states = OPTIMIZER_STATES.get(optimizer.lower(), 2.0)
    layers = _num(cfg, "num_hidden_layers", 0)
    trained = layers if num_layers == -1 else min(num_layers, layers)
    hidden = _num(cfg, "hidden_size", 0)
    heads = _num(cfg, "num_attention_heads", 1)
    inter = _num(cfg, "intermediate_size", 4 * hidden)
    vocab = _num(cfg, "vocab_size", 32000)
    tokens = batch_size * sequence
    # Kept for the backward pass, per token of one block: the norms' and projections'
    # inputs and outputs (about 8 x hidden and 3 x intermediate). The attention scores and
    # weights (float32) are rebuilt in one block's backward at a time.
    per_layer = tokens * (8 * hidden + 3 * inter) * model_bytes
    attention = 2 * batch_size * heads * sequence * sequence * 4
    if grad_checkpoint:
        activations = trained * tokens * hidden * model_bytes + per_layer + attention
    else:
        activations = trained * per_layer + attention
    activations += 3 * tokens * vocab * 4  # logits, their softmax and gradient, in float32
    overhead = max(weights // 10, 64 << 20)
    return TrainEstimate(
        name=name or path.name, fine_tune_type=fine_tune_type, batch_size=batch_size,
        sequence=sequence, weights=weights, trainable_parameters=n_trainable,
        trainable=trainable, gradients=trainable, optimizer_state=int(states * trainable),
        activations=activations, overhead=overhead,
        available=available_memory() if available is None else available,
        optimizer=optimizer.lower())


def check(report: TrainEstimate) -> TrainEstimate:
    """Refuse, with the numbers, a run that cannot fit."""
    if report.verdict == "too-big":
        raise TrainTooBig(report.message(), need=report.need, available=report.available)
    return report
