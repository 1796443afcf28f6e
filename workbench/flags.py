"""The flags several commands share (model, adapters, sampling, decoding), declared once:
``workbench``, ``generate``, ``chat``, ``eval`` and the app's own arguments take them from
here, and ``sampling_from_args`` reads them back the one way."""

from __future__ import annotations

import argparse
from typing import Any

from engine.sampling import PRESETS, SamplingParams, preset


def sampling_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sampling (defaults: the config's, else mlx-lm's)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a named set of sampling values")
    g.add_argument("--temp", type=float, dest="temperature", help="temperature (0 = greedy)")
    g.add_argument("--top-p", type=float, help="nucleus sampling, 0 < p <= 1 (1 = off)")
    g.add_argument("--min-p", type=float, help="min-p sampling, 0..1 (0 = off)")
    g.add_argument("--top-k", type=int, help="top-k sampling (0 = off)")
    g.add_argument("--repetition-penalty", type=float, help="1 = off, up to 3")
    g.add_argument("--max-tokens", type=int, help="longest reply, in tokens")
    g.add_argument("--seed", type=int, help="random seed, for repeatable sampling")
    return p


def model_flags(required: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model")
    g.add_argument("--model", "-m", required=required,
                   help="a model folder or a Hugging Face repo id (default: the config's, "
                        "else the demo model)")
    g.add_argument("--adapter", action="append", default=[], metavar="DIR",
                   help="a LoRA/DoRA adapter folder (mlx-lm format)")
    g.add_argument("--system", "-s", help="the system prompt")
    g.add_argument("--adapter-mode", choices=("auto", "fused", "unfused"), default=None,
                   help="how an adapter runs: unfused (default: exactly what "
                        "mlx_lm.load(adapter_path=...) gives; slower on a GPU), fused "
                        "(merged into a copy of the weights it touches: base-model speed and "
                        "exactly what an `mlx_lm fuse` model gives; costs that memory) or "
                        "auto (fused when the copy fits in memory, else unfused)")
    g.add_argument("--max-kv-size", type=int, default=None, metavar="N",
                   help="cap the context at N tokens (default: the model's)")
    g.add_argument("--thinking", choices=("on", "off"), default=None,
                   help="reasoning models: the chat template's enable_thinking switch "
                        "(default: the template's own)")
    g.add_argument("--demo", action="store_true",
                   help="use the built-in demo model (tiny, trained on a few dozen answers; "
                        "no download)")
    # Distributed (issue 14, docs/distributed.md): only under mlx.launch.
    g.add_argument("--shard", choices=["tensor", "pipeline"], default=None,
                   help="under mlx.launch: split the model over the ranks by tensor "
                        "parallelism (default) or by layers (pipeline: for a model larger "
                        "than one machine's memory)")
    decoding_flags(p)
    return p


def decoding_flags(p: argparse.ArgumentParser) -> None:
    """Faster decoding and a smaller cache (engine/speculative.py), with mlx-lm's names."""
    d = p.add_argument_group("decoding (the same replies, faster or in less memory)")
    d.add_argument("--draft-model", metavar="M", default=None,
                   help="speculative decoding with this smaller model of the same family "
                        "(same tokenizer): a folder or a Hugging Face repo id")
    d.add_argument("--num-draft-tokens", type=int, default=None, metavar="N",
                   help="tokens the draft model proposes per step (default 3, as mlx-lm)")
    d.add_argument("--prompt-lookup", type=int, nargs="?", const=10, default=None,
                   metavar="N", help="draft up to N tokens (default 10) from n-grams of the "
                                     "conversation itself: fast when replies repeat it")
    d.add_argument("--prompt-lookup-ngram", type=int, default=None, metavar="N",
                   help="with --prompt-lookup: the longest n-gram looked up (default 3)")
    d.add_argument("--kv-bits", type=int, default=None, metavar="B",
                   help="quantize the KV cache to B bits (2-8; default: none)")
    d.add_argument("--kv-group-size", type=int, default=None, metavar="G",
                   help="with --kv-bits: group size (32, 64 or 128; default 64)")
    d.add_argument("--quantized-kv-start", type=int, default=None, metavar="T",
                   help="with --kv-bits: quantize once the cache holds T tokens (default "
                        "5000, as mlx-lm)")


def sampling_from_args(args: argparse.Namespace, base: SamplingParams) -> SamplingParams:
    """The config's sampling values, then the preset, then each flag given."""
    params = preset(args.preset, max_tokens=base.max_tokens) if args.preset else base
    changes: dict[str, Any] = {}
    for name in ("temperature", "top_p", "min_p", "top_k", "repetition_penalty",
                 "max_tokens", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    return params.with_values(**changes)
