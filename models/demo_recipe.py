"""The recipe of the demo chat model: data, tokenizer, training and export, from one seed.

    python -m models.demo_recipe OUT_DIR [--seed 0]

writes into ``OUT_DIR``:

- ``demo-chat/``: a 2-layer, 128-wide llama (0.43 million weights) with a 1024-token
  byte-level BPE vocabulary trained on the same text, trained
  from random weights on the answers in ``models/demo_data`` by mlx-lm's own trainer
  (``mlx_lm lora --fine-tune-type full``) and stored in bfloat16 (fast on the CPU backend,
  half the size of float32; float16 decodes at half speed there);
- ``adapters/pirate/`` and ``adapters/brief/``: LoRA adapters trained by the same trainer
  (``--fine-tune-type lora``) on the same questions answered like a pirate, or in a few words;
- ``data/``: the generated jsonl the trainer read, and ``work/``: the trainer's own folders;
- ``RECIPE.json``: seed, arguments, versions, losses and the sha256 of every generated file.

The shipped copy lives in ``models/demo_assets`` (``python -m models.demo_recipe
models/demo_assets``, then delete its ``data/`` and ``work/``); the workbench copies it into
the demo kit at first start: nothing is trained there. Same seed, data and arguments give
the same files (mlx-lm's trainer is deterministic on one machine and backend).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import shutil
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .demo_recipe_data import (
    ADAPTER_NAMES,
    DATA_DIR,
    SEED,
    STYLES,
    corpus,
    examples,
    load_source,
    sha256_of,
    suggested_prompts,
    write_data,
)
from .demo_tokenizer import EOS_TOKEN_ID, LATEST_MESSAGE_TEMPLATE, write_tokenizer

__all__ = ["ADAPTER_NAMES", "ASSETS_DIR", "DATA_DIR", "SEED", "STYLES", "build", "corpus",
           "examples", "load_source", "suggested_prompts", "write_data"]

RECIPE_VERSION = 1
ASSETS_DIR = Path(__file__).resolve().parent / "demo_assets"
MODEL_NAME = "demo-chat"

VOCAB_SIZE = 1024

MODEL_SHAPE: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}
EXPORT_DTYPE = "bfloat16"

# mlx_lm lora arguments per stage, on top of mlx_lm.lora.CONFIG_DEFAULTS.
TRAIN_ARGS: dict[str, dict[str, Any]] = {
    "answer": {
        "fine_tune_type": "full",
        "num_layers": -1,
        "batch_size": 8,
        "iters": 360,
        "learning_rate": 3e-3,
        "lr_schedule": {"name": "cosine_decay", "arguments": [3e-3, 360, 1e-4],
                        "warmup": 30},
        "optimizer": "adamw",
        "optimizer_config": {"adamw": {"weight_decay": 0.0}},
        "mask_prompt": True,
        "max_seq_length": 256,
    },
    "pirate": {
        "fine_tune_type": "lora",
        "num_layers": -1,
        "batch_size": 8,
        "iters": 200,
        "learning_rate": 4e-3,
        "lr_schedule": {"name": "cosine_decay", "arguments": [4e-3, 200, 1e-4],
                        "warmup": 20},
        "lora_parameters": {"rank": 16, "scale": 2.0, "dropout": 0.0,
                            "keys": ["self_attn.q_proj", "self_attn.k_proj",
                                     "self_attn.v_proj", "self_attn.o_proj",
                                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]},
        "mask_prompt": True,
        "max_seq_length": 256,
    },
}
TRAIN_ARGS["brief"] = copy.deepcopy(TRAIN_ARGS["pirate"])

Say = Callable[[str], None]


# -- tokenizer and the untrained model --------------------------------------------------------
def model_config(vocab_size: int, seed: int, dtype: str) -> dict[str, Any]:
    return {**MODEL_SHAPE, "vocab_size": vocab_size, "torch_dtype": dtype,
            "eos_token_id": EOS_TOKEN_ID,
            "workbench_demo": {"kind": "chat", "recipe": RECIPE_VERSION, "seed": seed}}


def init_model(path: Path, texts: list[str], seed: int) -> Path:
    """A model folder with the tokenizer and random float32 weights (the training start)."""
    import mlx.core as mx
    from mlx_lm.utils import _get_classes, save_model

    path.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(path, texts, VOCAB_SIZE, MODEL_SHAPE["max_position_embeddings"])
    config = model_config(vocab, seed, "float32")
    model_cls, args_cls = _get_classes(config)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(config))
    mx.eval(model.parameters())
    save_model(path, model)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


# -- training: mlx-lm's own trainer -------------------------------------------------------------
def lora_args(style: str, model: Path, data: Path, adapter_path: Path, seed: int,
              iters: int | None = None) -> dict[str, Any]:
    """The complete ``mlx_lm lora`` argument set of one stage (also written as YAML-able
    JSON beside its output, so ``mlx_lm lora -c`` can rerun it)."""
    from mlx_lm.lora import CONFIG_DEFAULTS

    args = {**copy.deepcopy(CONFIG_DEFAULTS), **copy.deepcopy(TRAIN_ARGS[style])}
    if iters is not None:
        args["iters"] = iters
        if args.get("lr_schedule"):
            lr = args["lr_schedule"]
            lr["arguments"][1] = iters
            lr["warmup"] = min(lr.get("warmup", 0), max(iters // 4, 0))
    args.update(model=str(model), data=str(data), adapter_path=str(adapter_path), train=True,
                seed=seed, save_every=args["iters"], steps_per_report=20,
                steps_per_eval=args["iters"], val_batches=-1)
    return args


def train_stage(args: dict[str, Any], say: Say) -> list[float]:
    """Run one ``mlx_lm lora --train`` (the steps of ``mlx_lm.lora.run``, with a callback
    that keeps the losses); return the reported training losses."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.lora import train_model
    from mlx_lm.tuner.datasets import load_dataset
    from mlx_lm.tuner.trainer import TrainingCallback
    from mlx_lm.utils import load

    losses: list[float] = []

    class Keep(TrainingCallback):
        def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
            losses.append(round(float(train_info["train_loss"]), 4))
            say(f"  iter {train_info['iteration']}: loss {train_info['train_loss']:.3f}")

    ns = types.SimpleNamespace(**args)
    np.random.seed(ns.seed)
    mx.random.seed(ns.seed)
    model, tokenizer = load(ns.model)
    train_set, valid_set, _ = load_dataset(ns, tokenizer)
    with contextlib.redirect_stdout(io.StringIO()):
        train_model(ns, model, train_set, valid_set, Keep())
    return losses


# -- export ------------------------------------------------------------------------------------
README = (
    "# Workbench demo chat model\n\n"
    "A tiny llama (2 layers, 128 wide, 0.43 million weights) trained in a few minutes\n"
    "on two CPU cores on a few dozen answers about MLX Workbench (models/demo_data), by\n"
    "`python -m models.demo_recipe`. It answers those questions and writes readable words;\n"
    "it knows nothing else. Its chat template shows it only your latest message (it learnt\n"
    "single questions): it remembers no earlier turn and no system prompt. Its adapters are\n"
    "in ../adapters (pirate, brief). For real answers load a real model (`--model`, or F5\n"
    "in the app).\n")


def write_chat_template(init: Path, out: Path) -> None:
    """The tokenizer config of ``init`` with the latest-message template, written once every
    stage has trained (they read the training data through plain ChatML): the model ships
    with a template that shows it only the last question (``LATEST_MESSAGE_TEMPLATE``)."""
    config = json.loads((init / "tokenizer_config.json").read_text())
    config["chat_template"] = LATEST_MESSAGE_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def export_base(init: Path, trained: Path, out: Path, seed: int) -> Path:
    """The trained weights, cast to ``EXPORT_DTYPE``, as a plain model folder."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import load, save_model

    out.mkdir(parents=True, exist_ok=True)
    model, _ = load(str(init), adapter_path=str(trained))
    dtype = getattr(mx, EXPORT_DTYPE)
    model.update(tree_map(lambda a: a.astype(dtype), model.parameters()))
    mx.eval(model.parameters())
    save_model(out, model)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(init / name, out / name)
    config = json.loads((init / "config.json").read_text())
    config.update(model_config(config["vocab_size"], seed, EXPORT_DTYPE))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(README)
    return out


def export_adapter(trained: Path, out: Path, style: str) -> Path:
    """The trainer's adapter folder, with the paths of this machine replaced by names."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(trained / "adapters.safetensors", out / "adapters.safetensors")
    config = json.loads((trained / "adapter_config.json").read_text())
    config.update(model=MODEL_NAME, data=f"models/demo_data ({style} style)",
                  adapter_path=style, workbench_demo={"kind": "chat-adapter",
                                                      "recipe": RECIPE_VERSION})
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("mlx", "mlx-lm", "tokenizers")}


def build(out: str | Path, seed: int = SEED, iters: dict[str, int] | None = None,
          say: Say | None = None, keep_work: bool = True) -> dict[str, Any]:
    """The whole recipe into ``out``; returns what RECIPE.json records."""
    say = say or (lambda _m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work, data = out / "work", out / "data"
    for stale in (work, data, out / MODEL_NAME, out / "adapters"):
        shutil.rmtree(stale, ignore_errors=True)
    started = time.perf_counter()
    manifest: dict[str, Any] = {"recipe": RECIPE_VERSION, "seed": seed, "versions": _versions(),
                                "model": MODEL_NAME, "adapters": list(ADAPTER_NAMES),
                                "suggested": suggested_prompts(), "stages": {}}
    say("writing the training data")
    manifest["data"] = write_data(data, seed)
    say("training the tokenizer and the untrained model")
    init = init_model(work / "init", corpus(seed), seed)
    stages = manifest["stages"]
    for style in STYLES:
        t0 = time.perf_counter()
        base = init if style == "answer" else out / MODEL_NAME
        args = lora_args(style, base, data / style, work / style, seed,
                         (iters or {}).get(style))
        say(f"training {'the base model (full)' if style == 'answer' else style + ' (lora)'}: "
            f"{args['iters']} iterations")
        losses = train_stage(args, say)
        if style == "answer":
            export_base(init, work / style, out / MODEL_NAME, seed)
        else:
            export_adapter(work / style, out / "adapters" / style, style)
        recorded = {k: v for k, v in args.items() if k not in ("model", "data", "adapter_path")}
        stages[style] = {"args": recorded, "losses": losses,
                         "seconds": round(time.perf_counter() - t0, 1)}
    write_chat_template(init, out / MODEL_NAME)
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    manifest["files"] = {str(p.relative_to(out)): sha256_of(p) for p in sorted(out.rglob("*"))
                         if p.is_file() and p.parts[len(out.parts)] in (MODEL_NAME, "adapters")}
    (out / "RECIPE.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    say(f"done in {manifest['seconds']} s: {out}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.demo_recipe",
                                     description="Train the workbench demo chat model and "
                                                 "its adapters into OUT_DIR.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--iters", type=int, default=None,
                        help="iterations of every stage (default: the recipe's own)")
    parser.add_argument("--ship", action="store_true",
                        help="leave only what ships (no data/ or work/ folders)")
    ns = parser.parse_args(argv)
    iters = dict.fromkeys(STYLES, ns.iters) if ns.iters else None
    build(ns.out_dir, ns.seed, iters, say=lambda m: print(m, file=sys.stderr, flush=True),
          keep_work=not ns.ship)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
