"""Split one model over the ranks of an ``mx.distributed`` group (issue 14).

``load_sharded(path, group, how)`` is ``mlx_lm.load`` for one rank: the model is built with
lazy weights, split, and only then evaluated, so each rank reads only the weights it keeps.

- ``tensor``: mlx-lm's own tensor parallelism (``model.shard(group)``: attention heads and
  MLP columns split, two ``all_sum`` per layer per token). Every rank holds a slice of every
  layer.
- ``pipeline``: layers split in contiguous blocks, rank 0 running the last ones (mlx-lm's
  convention). Models with mlx-lm's ``PipelineMixin`` (qwen2, deepseek, ...) use their own
  ``pipeline(group)``. For the others, ``pipeline_split`` keeps the model's own forward (a
  forward of ours in its place dropped what each model does around its layers: gemma's
  embedding scale, granite's multipliers, gemma2/gemma3's masks and cache layout, issue 19
  #22): the layers of the other ranks become weightless stand-ins whose caches only keep
  count, the first layer of this rank's block receives the hidden state from the rank
  before, the last one sends it on, and the output of the model's last layer (rank 0's) is
  gathered to every rank, which then applies the model's norm and head (so every rank
  samples the same token). A model whose layers keep other state than keys and values
  (lfm2's convolutions, Mamba's) cannot be split this way and is refused before any weight
  is read, with a pointer to the other mode only when that one works.

Exact: the pipeline runs the same operations in the same order as one process (greedy output
is identical); tensor parallelism sums partial products across ranks, which for the models
tested gave identical greedy output too (tests/test_distributed.py compares both).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import WorkbenchError

SHARD_MODES = ("tensor", "pipeline")


def block(num_layers: int, rank: int, size: int) -> tuple[int, int]:
    """The layers ``[first, end)`` rank ``rank`` runs: even blocks, the low ranks taking the
    extra layers, rank 0 the last block (as mlx-lm's ``PipelineMixin``)."""
    base, extra = divmod(num_layers, size)
    split = [base + (1 if r < extra else 0) for r in range(size)]
    first = sum(split[rank + 1:])
    return first, first + split[rank]


class _Stage:
    """What one slot of the layer list does beyond its layer, on this rank: receive the
    hidden state first, send it on after, gather rank 0's result to every rank after."""

    def __init__(self, group: Any, recv: bool, send: bool, gather: bool) -> None:
        self.group, self.recv, self.send, self.gather = group, recv, send, gather

    def before(self, x: Any) -> Any:
        import mlx.core as mx

        if self.recv:  # the block before ours runs on the next rank up
            x = mx.distributed.recv_like(x, self.group.rank() + 1, group=self.group)
        return x

    def after(self, h: Any, cache: Any) -> Any:
        import mlx.core as mx

        if self.send:
            h = mx.distributed.send(h, self.group.rank() - 1, group=self.group)
            keys = getattr(cache, "keys", None)  # evaluating the cache (prefill) also sends
            if isinstance(keys, mx.array):
                cache.keys = mx.depends(keys, h)
            elif isinstance(keys, tuple) and keys:  # a quantized cache
                cache.keys = (mx.depends(keys[0], h), *keys[1:])
        if self.gather:  # every rank gets the last layer's output (rank 0's), kept in the graph
            h = mx.distributed.all_gather(h, group=self.group)[: h.shape[0]]
        return h


def _cache_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The cache a layer is called with: ``layer(h, mask, cache)`` or ``cache=``."""
    return kwargs.get("cache", args[1] if len(args) > 1 else None)


_CLASSES: dict[Any, type] = {}


def _skipped_layer(layer: Any, width: int, stage: _Stage) -> Any:
    """A stand-in for a layer that another rank runs: an empty module that passes the hidden
    state through and keeps its cache as long as the real one (one head of zeros per token),
    so the masks and positions the model reads from any layer's cache are those of one
    process. It copies the layer's plain flags (``use_sliding``) the model may read."""
    if "skipped" not in _CLASSES:
        import mlx.core as mx
        import mlx.nn as nn

        class SkippedLayer(nn.Module):
            def __init__(self, flags: dict[str, Any], width: int, stage: _Stage) -> None:
                super().__init__()
                for key, value in flags.items():
                    setattr(self, key, value)
                self.width, self.stage = width, stage

            def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
                cache = _cache_arg(args, kwargs)
                if cache is not None:
                    zeros = mx.zeros((x.shape[0], 1, x.shape[1], self.width), dtype=x.dtype)
                    cache.update_and_fetch(zeros, zeros)
                return self.stage.after(x, cache)

        _CLASSES["skipped"] = SkippedLayer
    flags = {k: v for k, v in vars(layer).items()
             if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
    return _CLASSES["skipped"](flags, width, stage)


def _staged_layer(layer: Any, stage: _Stage) -> Any:
    """``layer`` itself (same weights, same names), its calls wrapped by ``stage``."""
    cls = type(layer)
    if cls not in _CLASSES:
        def call(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
            h = cls.__call__(self, self.pipeline_stage.before(x), *args, **kwargs)
            return self.pipeline_stage.after(h, _cache_arg(args, kwargs))

        _CLASSES[cls] = type(f"Staged{cls.__name__}", (cls,), {"__call__": call})
    layer.__class__ = _CLASSES[cls]
    layer.pipeline_stage = stage
    return layer


def _inner(model: Any) -> Any:
    """The module that owns the model's list of layers (``model.model`` for most,
    ``model.language_model.model`` for gemma3); None when there is no such module."""
    layers = getattr(model, "layers", None)
    module = model
    for _depth in range(4):
        module = next((getattr(module, n) for n in ("model", "language_model")
                       if getattr(module, n, None) is not None), None)
        if module is None:
            return None
        if isinstance(module, dict) and module.get("layers") is layers:  # owned, not a property
            return module
    return None


def _cache_width(layer: Any, config: dict[str, Any]) -> int:
    """The head size of ``layer``'s keys: the width a skipped layer's cache keeps (a quantized
    cache needs the real one's)."""
    width = getattr(getattr(layer, "self_attn", None), "head_dim", None)
    text = config.get("text_config") or config
    heads = text.get("num_attention_heads") or 1
    return int(width or text.get("head_dim") or text.get("hidden_size", 64) // heads)


def pipeline_refusal(model: Any) -> str | None:
    """Why ``model`` cannot be split by layers here (None: it can). Asked before any weight
    is read: a layer another rank runs must keep a cache that is a plain key/value one."""
    from mlx_lm.models.cache import KVCache, RotatingKVCache, make_prompt_cache

    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "pipeline"):  # mlx-lm's own (PipelineMixin)
        return None
    if _inner(model) is None:
        return "their layers are not in one list"
    kinds = {type(c) for c in make_prompt_cache(model)}
    if not kinds <= {KVCache, RotatingKVCache}:
        names = ", ".join(sorted(k.__name__ for k in kinds - {KVCache, RotatingKVCache}))
        return f"some layers keep state other than keys and values ({names})"
    return None


def pipeline_split(model: Any, group: Any, config: dict[str, Any] | None = None
                   ) -> tuple[int, int]:
    """Keep only this rank's block of layers and route the forward through the group.
    Returns the block ``(first, end)``. Call before the weights are evaluated.

    The model's own forward runs unchanged (gemma's embedding scale, granite's multipliers,
    gemma3's alternating masks are all kept): the layers of the other ranks are replaced by
    ``_Skipped`` stand-ins, and the first and last layers of this rank's block receive and
    send the hidden state (see ``_Stage``)."""
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "pipeline"):  # mlx-lm's own (PipelineMixin)
        inner.pipeline(group)
        return int(inner.start_idx), int(inner.end_idx)
    inner = _inner(model)
    layers = list(inner.layers)
    if len(layers) < group.size():
        raise WorkbenchError(f"the model has {len(layers)} layers, fewer than the "
                             f"{group.size()} ranks: use fewer ranks")
    rank, size, last = group.rank(), group.size(), len(layers) - 1
    first, end = block(len(layers), rank, size)
    slots = []
    for i, layer in enumerate(layers):
        stage = _Stage(group, recv=i == first and rank < size - 1,
                       send=i == end - 1 and rank != 0, gather=i == last and size > 1)
        slots.append(_staged_layer(layer, stage) if first <= i < end
                     else _skipped_layer(layer, _cache_width(layer, config or {}), stage))
    inner.layers = slots  # the others' weights go before they are ever read
    return first, end


def refusal(model: Any, config: dict[str, Any], how: str, size: int) -> str | None:
    """The one line that refuses splitting ``model`` over ``size`` ranks by ``how`` (None:
    it can be). Names the other mode only when that one would work."""
    kind = config.get("model_type", "this")
    tensor_why = _tensor_refusal(model, size)
    pipeline_why = pipeline_refusal(model)
    why = tensor_why if how == "tensor" else pipeline_why
    if why is None:
        return None
    other, other_why = ("pipeline", pipeline_why) if how == "tensor" else ("tensor", tensor_why)
    advice = (f"use --shard {other}" if other_why is None
              else "run it in one process, without mlx.launch")
    return f"{kind} models cannot be split by {'layers' if how == 'pipeline' else 'tensors'} " \
           f"({why}): {advice}"


def _tensor_refusal(model: Any, size: int) -> str | None:
    if not hasattr(model, "shard"):
        return "mlx-lm has no tensor-parallel split for them"
    attn = getattr(model.layers[0], "self_attn", None) if len(model.layers) else None
    heads = [getattr(attn, attr, 0) for attr in
             ("n_heads", "n_kv_heads", "num_heads", "num_key_value_heads")]
    if any(h and h % size for h in heads):
        return (f"the attention heads ({', '.join(map(str, filter(None, heads)))}) do not "
                f"divide by {size} ranks")
    return None


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
    if how not in SHARD_MODES:
        raise WorkbenchError(f"--shard must be one of {', '.join(SHARD_MODES)}, not {how!r}")
    refused = refusal(model, config, how, group.size())
    if refused is not None:
        raise WorkbenchError(refused)
    if how == "tensor":
        model.shard(group)
        layers = (0, num_layers)
    else:
        layers = pipeline_split(model, group, config)
    mx.eval(model.parameters())
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id", None))
    return model, tokenizer, config, layers, parameters


def local_weight_bytes(model: Any) -> int:
    """Bytes of the weights this rank holds."""
    from mlx.utils import tree_flatten

    return sum(int(v.nbytes) for _k, v in tree_flatten(model.parameters()))
