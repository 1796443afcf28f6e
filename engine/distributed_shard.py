"""Split one model over the ranks of an ``mx.distributed`` group (issue 14).

``load_sharded(path, group, how)`` is ``mlx_lm.load`` for one rank: the model is built with
lazy weights, split, and only then evaluated, so each rank reads only the weights it keeps.

- ``tensor``: mlx-lm's own tensor parallelism (``model.shard(group)``: attention heads and
  MLP columns split, two ``all_sum`` per layer per token). Every rank holds a slice of every
  layer.
- ``pipeline``: layers split in contiguous blocks, rank 0 running the last ones (mlx-lm's
  convention). Models with mlx-lm's ``PipelineMixin`` (qwen2, deepseek, ...) use their own
  ``pipeline(group)``; for the others whose inner model is the usual ``embed_tokens`` /
  ``layers`` / ``norm`` (llama, qwen3, mistral, ...), ``pipeline_split`` does the same thing:
  each rank keeps its block of layers, receives the hidden state from the rank before it,
  sends its output on, and the last block's output is gathered to every rank, which then
  applies the norm and the head itself (so every rank samples the same token).

Exact: the pipeline runs the same operations in the same order as one process (greedy output
is identical); tensor parallelism sums partial products across ranks, which for the models
tested gave identical greedy output too (tests/test_distributed.py compares both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import WorkbenchError

SHARD_MODES = ("tensor", "pipeline")


def block(num_layers: int, rank: int, size: int) -> tuple[int, int]:
    """The layers ``[first, end)`` rank ``rank`` runs: even blocks, the low ranks taking the
    extra layers, rank 0 the last block (as mlx-lm's ``PipelineMixin``)."""
    base, extra = divmod(num_layers, size)
    split = [base + (1 if r < extra else 0) for r in range(size)]
    first = sum(split[rank + 1:])
    return first, first + split[rank]


def _pipelined_call(self: Any, inputs: Any, cache: Any = None,
                    input_embeddings: Any = None) -> Any:
    """The inner model's forward over this rank's block of layers (see module docstring)."""
    import mlx.core as mx
    from mlx_lm.models.base import create_attention_mask

    group = self.pipeline_group
    rank, size = group.rank(), group.size()
    h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
    if cache is None:
        cache = [None] * len(self.layers)
    window = getattr(self, "sliding_window", None)
    masks: dict[bool, Any] = {}
    if rank < size - 1:  # the block before ours runs on the next rank up
        h = mx.distributed.recv_like(h, rank + 1, group=group)
    for layer, c in zip(self.layers, cache, strict=True):
        sliding = bool(getattr(layer, "use_sliding", False))
        if sliding not in masks:
            masks[sliding] = create_attention_mask(h, c, window_size=window if sliding
                                                   else None)
        h = layer(h, masks[sliding], cache=c)
    if rank != 0:
        h = mx.distributed.send(h, rank - 1, group=group)
        if cache[-1] is not None:  # evaluating the cache (prefill) also sends
            cache[-1].keys = mx.depends(cache[-1].keys, h)
    if size > 1:  # every rank gets the last block's output (rank 0's), kept in the graph
        h = mx.distributed.all_gather(h, group=group)[: h.shape[0]]
    return self.norm(h)


_PIPELINED: dict[type, type] = {}


def pipeline_split(model: Any, group: Any) -> tuple[int, int]:
    """Keep only this rank's block of layers and route the forward through the group.
    Returns the block ``(first, end)``. Call before the weights are evaluated."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "pipeline"):  # mlx-lm's own (PipelineMixin)
        inner.pipeline(group)
        return int(inner.start_idx), int(inner.end_idx)
    if inner is None or not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        raise WorkbenchError(f"{type(model).__module__.rsplit('.', 1)[-1]} models cannot be "
                             "split by layers here: use --shard tensor")
    layers = list(inner.layers)
    if len(layers) < group.size():
        raise WorkbenchError(f"the model has {len(layers)} layers, fewer than the "
                             f"{group.size()} ranks: use fewer ranks")
    first, end = block(len(layers), group.rank(), group.size())
    inner.layers = layers[first:end]  # the others go before their weights are ever read
    cls = type(inner)
    if cls not in _PIPELINED:
        _PIPELINED[cls] = type(f"Pipelined{cls.__name__}", (cls,), {"__call__": _pipelined_call})
    inner.__class__ = _PIPELINED[cls]
    inner.pipeline_group = group
    return first, end


def load_sharded(path: Path, group: Any, how: str
                 ) -> tuple[Any, Any, dict[str, Any], tuple[int, int], int]:
    """``mlx_lm.load`` for one rank of ``group``: ``(model, tokenizer, config, layers,
    parameters)``, with ``layers`` the block this rank runs (all of them under tensor
    parallelism) and ``parameters`` the whole model's count (before the split)."""
    import mlx.core as mx
    from mlx_lm.utils import get_total_parameters, load_model, load_tokenizer

    model, config = load_model(path, lazy=True)
    parameters = int(get_total_parameters(model))  # shapes only: nothing is read yet
    num_layers = len(model.layers)
    if how == "tensor":
        if not hasattr(model, "shard"):
            raise WorkbenchError(f"{config.get('model_type', 'this')} models have no "
                                 "tensor-parallel split in mlx-lm: use --shard pipeline")
        heads = [getattr(layer.self_attn, attr, 0) for layer in model.layers[:1]
                 for attr in ("n_heads", "n_kv_heads", "num_heads", "num_key_value_heads")]
        if any(h and h % group.size() for h in heads):
            raise WorkbenchError(f"the attention heads ({', '.join(map(str, filter(None, heads)))})"
                                 f" do not divide by {group.size()} ranks: use --shard pipeline")
        model.shard(group)
        layers = (0, num_layers)
    elif how == "pipeline":
        layers = pipeline_split(model, group)
    else:
        raise WorkbenchError(f"--shard must be one of {', '.join(SHARD_MODES)}, not {how!r}")
    mx.eval(model.parameters())
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id", None))
    return model, tokenizer, config, layers, parameters


def local_weight_bytes(model: Any) -> int:
    """Bytes of the weights this rank holds."""
    from mlx.utils import tree_flatten

    return sum(int(v.nbytes) for _k, v in tree_flatten(model.parameters()))
