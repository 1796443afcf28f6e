"""The fuse process: ``mlx_lm fuse``'s steps, one JSON event per stdout line
(``channel.event_writer``).

Run by ``FuseJob`` (jobs/fuse.py) as ``python -m jobs.fuse_child`` with
mlx_lm fuse's own flags. The steps are mlx_lm/fuse.py's ``main``: load the model with the
adapter, replace every module that has ``fuse`` by its fused form, dequantize if asked,
``mlx_lm.utils.save``, and export GGUF if asked. Two additions: the adapter is checked
against the loaded model first (one line instead of a traceback), and each fused layer is
evaluated as it is made, so progress can be reported. mlx-lm's own prints go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from jobs.channel import event_writer, out_of_memory
from jobs.fuse import DEFAULT_GGUF_PATH
from jobs.fuse_events import CODEC, FuseFailed, FuseFinished, FuseProgress


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jobs.fuse_child")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter-path", required=True)
    p.add_argument("--save-path", required=True)
    p.add_argument("--dequantize", action="store_true")
    p.add_argument("--export-gguf", action="store_true")
    p.add_argument("--gguf-path", default=DEFAULT_GGUF_PATH)
    p.add_argument("--trust-remote-code", action="store_true")
    return p.parse_args(argv)


def fuse(args: argparse.Namespace, say: Any) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.gguf import convert_to_gguf
    from mlx_lm.utils import dequantize_model, load, load_adapters, save

    from engine.adapter_fit import check_against_model
    from engine.adapters import inspect_adapter

    model_path = Path(args.model)
    say(FuseProgress("load", f"loading {model_path.name}"))
    # mlx_lm.load(model, adapter_path=...) is load_model, load_adapters, eval, tokenizer:
    # the same steps, with the adapter checked against the model before it is applied.
    model, tokenizer, config = load(args.model, return_config=True,
                                    trust_remote_code=args.trust_remote_code)
    info = check_against_model(inspect_adapter(args.adapter_path), model, args.model)
    if not info.valid:
        raise _Refused(info.reason, "adapter")
    model = load_adapters(model, args.adapter_path)
    model.eval()

    fusable = [(n, m) for n, m in model.named_modules() if hasattr(m, "fuse")]
    fused_linears = []
    for i, (name, module) in enumerate(fusable, start=1):
        fused = module.fuse(dequantize=args.dequantize)
        mx.eval(fused.parameters())
        fused_linears.append((name, fused))
        say(FuseProgress("fuse", f"fused {i} of {len(fusable)} layers", i, len(fusable)))
    if fused_linears:
        model.update_modules(tree_unflatten(fused_linears))

    if args.dequantize:
        say(FuseProgress("dequantize", "dequantizing the model"))
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)

    save_path = Path(args.save_path)
    say(FuseProgress("save", "writing the fused model"))
    save(save_path, args.model, model, tokenizer, config, donate_model=False)

    if args.export_gguf:
        model_type = config["model_type"]
        if model_type not in ["llama", "mixtral", "mistral"]:
            raise _Refused(f"mlx-lm cannot export {model_type} models to GGUF", "gguf")
        say(FuseProgress("gguf", "exporting GGUF"))
        weights = dict(tree_flatten(model.parameters()))
        convert_to_gguf(save_path, weights, config, str(save_path / args.gguf_path))


class _Refused(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say = event_writer(CODEC)  # mlx-lm prints progress: stdout is kept for the events
    start = time.perf_counter()
    try:
        fuse(args, say)
    except _Refused as exc:
        say(FuseFailed(str(exc), exc.kind))
        return 1
    except Exception as exc:
        if out_of_memory(exc):
            say(FuseFailed("out of memory while fusing: nothing was written; close other "
                           "programs or fuse on a machine with more memory", "memory"))
            return 1
        if isinstance(exc, ValueError | FileNotFoundError | NotImplementedError):
            say(FuseFailed(f"mlx-lm cannot fuse this: {_first_line(exc)}", "model"))
            return 1
        raise
    say(FuseFinished(str(args.save_path), round(time.perf_counter() - start, 3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
