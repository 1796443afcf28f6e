"""What every face of the workbench does first: read the config, pick the model, start
the engine. No UI library here, so the line-mode commands stay light."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import (
    Engine,
    EngineAPI,
    LoadProgress,
    ModelInfo,
    Notice,
    SamplingParams,
    follow_sync,
)

from . import paths
from .config import Config, load_config


@dataclass(frozen=True)
class ModelChoice:
    spec: str  # folder or repo id, as given to Engine.load
    is_demo: bool
    adapter: str | None = None


def demo_adapters(info: ModelInfo | None) -> str | None:
    """The folder of the demo model's own adapters (pirate, brief) while a demo model is
    loaded, to list beside --adapters and the config's folder; else None."""
    if info is None or not info.is_demo:
        return None
    from models.demo import DemoKit

    path = Path(info.path)
    folder = DemoKit(path.parent).adapters(path.name)  # the kit keeps them by model name
    return str(folder) if folder.is_dir() else None


def demo_model_path(progress: Callable[[str], None] | None = None) -> Path:
    """The demo model, built into the user cache folder the first time it is asked for."""
    from models.demo import ensure_demo

    return ensure_demo(paths.demo_dir(), progress).default_model


def bench_model_path(progress: Callable[[str], None] | None = None) -> Path:
    """The model the benchmarks use when none is given: the demo kit's llama (random
    weights; its chat template renders the whole conversation, so multi-turn reuse is
    measured: the chat demo's reads only the latest message)."""
    from models.demo import ensure_demo

    return ensure_demo(paths.demo_dir(), progress).llama


def choose_model(args: argparse.Namespace, config: Config,
                 progress: Callable[[str], None] | None = None) -> ModelChoice:
    adapters = getattr(args, "adapter", None) or []
    adapter = adapters[-1] if adapters else None
    model = getattr(args, "model", None)
    if getattr(args, "demo", False) or not (model or config.model):
        from models.demo import DemoKit

        path = demo_model_path(progress)
        folder = DemoKit(path.parent).adapters(path.name)  # the kit keeps them by model name
        if adapter and not Path(adapter).expanduser().exists() and (folder / adapter).is_dir():
            adapter = str(folder / adapter)  # `--demo --adapter pirate`
        return ModelChoice(str(path), True, adapter)
    return ModelChoice(model or config.model, False, adapter)


def on_engine(engine: EngineAPI, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the engine thread and return its value (its error: ``EngineError``).

    Building the demo kit writes random weights and quantizes them: MLX work, which belongs on
    the one thread that owns MLX, even in a script that has no other thread.
    """
    return engine.run_mlx(lambda _emit, _cancel: fn()).result_sync()


def choose_model_on(engine: EngineAPI, args: argparse.Namespace, config: Config,
                    progress: Callable[[str], None] | None = None) -> ModelChoice:
    """``choose_model``, run on the engine thread (it may build the demo kit)."""
    choice: ModelChoice = on_engine(engine, lambda: choose_model(args, config, progress))
    return choice


def decoding_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    """The decoding settings (engine/speculative.py) from ``base`` (e.g. a resumed
    session's KV settings) and the flags given; ``BadSetting`` (one line) for a bad value."""
    from dataclasses import replace

    from engine.speculative import DecodingSettings, KVSettings

    settings = base if isinstance(base, DecodingSettings) else DecodingSettings()
    kv = settings.kv
    changes = {name: getattr(args, flag) for name, flag in (
        ("bits", "kv_bits"), ("group_size", "kv_group_size"),
        ("start", "quantized_kv_start")) if getattr(args, flag, None) is not None}
    if changes:
        kv = replace(kv, **changes)
    values = {name: getattr(args, flag) for name, flag in (
        ("num_draft_tokens", "num_draft_tokens"), ("prompt_lookup", "prompt_lookup"),
        ("lookup_ngram", "prompt_lookup_ngram")) if getattr(args, flag, None) is not None}
    return replace(settings, kv=KVSettings(kv.bits, kv.group_size, kv.start), **values)


def with_config_decoding(args: argparse.Namespace, config: Config) -> argparse.Namespace:
    """``args`` with the config's [decoding] values where no flag was given."""
    for key, value in config.decoding.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def start_engine(args: argparse.Namespace, config: Config) -> Engine:
    max_kv = getattr(args, "max_kv_size", None) or config.max_kv_size or None
    args = with_config_decoding(args, config)
    return Engine(max_kv_size=max_kv, decoding=decoding_from_args(args),
                  draft_model=getattr(args, "draft_model", None),
                  adapter_mode=getattr(args, "adapter_mode", None) or "unfused")


def load_blocking(engine: EngineAPI, choice: ModelChoice, quiet: bool = False) -> ModelInfo:
    """Load and wait, reporting progress on stderr (for the line-mode commands). A load that
    fails raises ``EngineError`` (its one line and kind)."""

    def progress(event: LoadProgress) -> None:
        if quiet:
            return
        if event.stage == "download" and event.total:
            print(f"\r{event.line()}", end="", file=sys.stderr, flush=True)
        elif event.stage != "ready":
            print(event.message, file=sys.stderr)

    notices: list[str] = []
    info: ModelInfo = follow_sync(engine.load(choice.spec, choice.adapter), {
        LoadProgress: progress, Notice: lambda e: notices.append(e.message)})
    wanted = engine.state.draft_wanted
    refused = next((n for n in notices if "without a draft model" in n), None)
    for line in notices:
        if not quiet and line != refused:
            print(f"note: {line}", file=sys.stderr)
    if wanted and info.draft is None:  # asked for with --draft-model, and refused
        from engine import EngineError

        raise EngineError(refused or "the draft model was not loaded: check --draft-model",
                          kind="draft")
    return info


def demo_label(info: ModelInfo) -> str:
    from models.demo import is_trained_demo

    if not is_trained_demo(info.path):  # the kit's random models (tests, benchmarks)
        return (f"{info.name} is the DEMO model: random weights, it writes nonsense. "
                "Choose a real one with --model (a folder or a Hugging Face repo id).")
    return (f"{info.name} is the DEMO model: a tiny model trained on a few dozen answers, for "
            "trying the workbench (try its pirate and brief adapters). For real answers "
            "choose a real model with --model (a folder or a Hugging Face repo id) or F5.")


def setup(args: argparse.Namespace) -> tuple[Config, SamplingParams]:
    """Config plus sampling from flags; config problems are printed, not fatal."""
    from .flags import sampling_from_args

    config = load_config()
    for problem in config.problems:
        print(f"workbench: {problem}", file=sys.stderr)
    return config, sampling_from_args(args, config.sampling)
