"""Build tiny, offline, deterministic model folders that ``mlx_lm.load`` accepts.

The demo model lets the workbench open with no download, and the tests exercise the real
loading, generation and adapter code without a network. Everything is built from a seed: a
byte-level BPE tokenizer trained with ``tokenizers`` on Python's own help text
(``pydoc_data.topics``), random weights for a llama- or qwen3-shaped model, a ChatML chat
template, a 4-bit quantized copy, and LoRA/DoRA adapters in mlx-lm's adapter format.

Those weights are random: they write fluent-looking nonsense (the tests' greedy-parity
models). The kit also holds the demo *chat* model the app opens on, ``demo-chat``: a tiny
llama trained on a few dozen answers with two LoRA adapters (pirate, brief), made by
``python -m models.demo_recipe`` and shipped in ``models/demo_assets``; ``build_demo`` only
copies it (no training at start).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import WorkbenchError

from .demo_tokenizer import EOS_TOKEN_ID, THINKING_TEMPLATE, THINKING_TOKENS, write_tokenizer

DEMO_VERSION = 5
"""Bumped whenever the kit's output changes, so a cached demo folder is rebuilt."""

@dataclass(frozen=True)
class DemoSpec:
    """Shape of one demo model."""

    name: str
    model_type: str  # "llama" or "qwen3"
    hidden_size: int = 256
    num_hidden_layers: int = 4
    intermediate_size: int = 512
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vocab_size: int = 1024
    max_position_embeddings: int = 4096
    dtype: str = "float32"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    thinking: bool = False  # a reasoning model's tokens and template (<think> blocks)

    def config(self, vocab_size: int) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "model_type": self.model_type,
            "architectures": [
                "LlamaForCausalLM" if self.model_type == "llama" else "Qwen3ForCausalLM"
            ],
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": 1e-5,
            "vocab_size": vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.model_type == "qwen3",
            "torch_dtype": self.dtype,
            "workbench_demo": {"version": DEMO_VERSION, "seed": self.seed},
        }
        if self.model_type == "qwen3":
            cfg["head_dim"] = self.hidden_size // self.num_attention_heads
        cfg.update(self.extra)
        return cfg


LLAMA = DemoSpec(name="llama", model_type="llama", seed=0)
QWEN3 = DemoSpec(name="qwen3", model_type="qwen3", seed=1)
# A reasoning model (Qwen3's shape, small; a Qwen3-style template that drops earlier
# replies' reasoning and takes enable_thinking), taught to write one <think> block: for the
# <think> paths and the reasoning view, offline. Made by models/demo_think.py, shipped.
QWEN3_THINK = DemoSpec(name="qwen3-think", model_type="qwen3", seed=2, thinking=True,
                       hidden_size=64, num_hidden_layers=2, intermediate_size=128)

# Random models of real sizes, for benchmarks (the demo tokenizer keeps the vocabulary small,
# so the layers carry the parameters, as in a real model of that size).
SIZED = {
    "0.5b": DemoSpec(name="llama-0.5b", model_type="llama", hidden_size=1536,
                     num_hidden_layers=16, intermediate_size=4864, num_attention_heads=12,
                     num_key_value_heads=2, dtype="bfloat16", seed=5),
    # Llama-3.2-1B's layer shape (16 layers, 2048 wide): about 0.97 billion parameters.
    "1b": DemoSpec(name="llama-1b", model_type="llama", hidden_size=2048, num_hidden_layers=16,
                   intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                   dtype="bfloat16", seed=6),
}


@dataclass(frozen=True)
class AdapterSpec:
    """Shape of one demo adapter: which layers, which projections, what rank."""

    name: str
    fine_tune_type: str  # "lora" or "dora"
    rank: int
    num_layers: int
    keys: tuple[str, ...]
    scale: float = 10.0
    seed: int = 0


ADAPTERS = (
    AdapterSpec("tone-a", "lora", rank=4, num_layers=2,
                keys=("self_attn.q_proj", "self_attn.v_proj"), seed=11),
    AdapterSpec("tone-b", "lora", rank=8, num_layers=4,
                keys=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
                seed=12),
    AdapterSpec("tone-d", "dora", rank=4, num_layers=3,
                keys=("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"), seed=13),
)

CHAT_ASSETS = Path(__file__).resolve().parent / "demo_assets"
THINK_ASSETS = Path(__file__).resolve().parent / "demo_think_assets"  # models/demo_think.py
CHAT_MODEL = "demo-chat"
"""The shipped demo chat model (``CHAT_ASSETS / CHAT_MODEL``) and its adapters
(``CHAT_ASSETS / "adapters"``), as ``python -m models.demo_recipe`` writes them."""

TRAIN_CHAT = Path(__file__).resolve().parent / "demo_data" / "train_chat.json"
"""A small chat dataset for ``workbench train --demo`` (train and valid examples); the kit
holds it as mlx-lm's jsonl folder (``DemoKit.train_data``)."""

Progress = Callable[[str], None]


def _corpus() -> list[str]:
    """Training text that ships with every CPython: the pydoc help topics."""
    from pydoc_data import topics

    return [topics.topics[k] for k in sorted(topics.topics)]


def _write_tokenizer(path: Path, spec: DemoSpec) -> int:
    if spec.thinking:
        return write_tokenizer(path, _corpus(), spec.vocab_size,
                               chat_template=THINKING_TEMPLATE, extra_tokens=THINKING_TOKENS)
    return write_tokenizer(path, _corpus(), spec.vocab_size)


STAMP_FILE = "DEMO_STAMP"


class DemoFolderTaken(WorkbenchError):
    """The folder to build into holds something that is not the demo's: nothing was touched."""

    kind = "demo-folder"


def _check_target(path: Path, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse a ``path`` that exists and is neither empty nor ``ours``: building there would
    replace (or write into) whatever the user keeps in it."""
    if path.is_symlink():
        raise DemoFolderTaken(f"{path} is a symbolic link: give a new or empty folder for the "
                              f"{what} (nothing was changed)")
    if not path.exists():
        return
    if not path.is_dir():
        raise DemoFolderTaken(f"{path} is a file, not a folder: give a new or empty folder for "
                              f"the {what} (nothing was changed)")
    try:
        empty = next(path.iterdir(), None) is None
    except OSError as exc:
        raise DemoFolderTaken(f"{path} cannot be read ({exc.strerror or exc}): give a new or "
                              f"empty folder for the {what}") from None
    if not empty and not ours(path):
        raise DemoFolderTaken(f"{path} is not empty and is not an earlier {what}: it was left "
                              "as it is; give a new or empty folder")


def check_kit_folder(path: str | Path) -> None:
    """Raise ``DemoFolderTaken`` unless ``build_demo(path)`` may replace what is there:
    nothing, an empty folder, or a kit it built before (it holds ``DEMO_STAMP``)."""
    _check_target(Path(path), lambda p: (p / STAMP_FILE).is_file(), "demo kit")


def check_model_folder(path: str | Path) -> None:
    """Raise ``DemoFolderTaken`` unless a demo model may be written at ``path``: nothing, an
    empty folder, or a demo model written before (``is_demo_model``)."""
    _check_target(Path(path), is_demo_model, "demo model")


def build_model(path: str | Path, spec: DemoSpec = LLAMA,
                teach: Callable[[Any, Path, int], None] | None = None) -> Path:
    """Write a full-precision demo model folder to ``path`` and return it; ``teach``, for a
    reasoning spec: how its weights learn their ``<think>`` block (``models.demo_think``
    passes its teacher: the kit ships that model, built once).

    ``path`` must be new, empty or an earlier demo model (else ``DemoFolderTaken``)."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import _get_classes, save_model

    path = Path(path)
    check_model_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = _write_tokenizer(path, spec)
    config = spec.config(vocab)
    config["eos_token_id"] = EOS_TOKEN_ID
    model_cls, args_cls = _get_classes(config)
    mx.random.seed(spec.seed)
    model = model_cls(args_cls.from_dict(config))
    if teach is not None and spec.thinking:
        teach(model, path, spec.seed)
    dtype = getattr(mx, spec.dtype)
    model.update(tree_map(lambda a: a.astype(dtype), model.parameters()))
    mx.eval(model.parameters())
    save_model(path, model)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (path / "README.md").write_text(
        f"# Workbench demo model ({spec.model_type})\n\n"
        "Random weights, built locally by `workbench demo-model`. It writes nonsense: use it to\n"
        "try the workbench, not to chat. Point `--model` at a real model for real answers.\n"
        + ("\nThe reasoning demo: taught to write one `<think>` block, then an answer, so the\n"
           "reasoning view can be tried offline (`python -m models.demo_think`).\n"
           if teach is not None and spec.thinking else "")
    )
    return path


def quantize(src: str | Path, dst: str | Path, bits: int = 4, group_size: int = 64) -> Path:
    """Quantize a model folder with mlx-lm's own convert into ``dst``, which must be new,
    empty or an earlier demo model (it is replaced; else ``DemoFolderTaken``)."""
    from mlx_lm import convert

    dst = Path(dst)
    check_model_folder(dst)
    if dst.exists():
        shutil.rmtree(dst)
    # convert() prints "[INFO] ..." lines on stdout, which belongs to the caller's output.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        convert(str(src), mlx_path=str(dst), quantize=True, q_bits=bits,
                q_group_size=group_size)
    return dst


def build_adapter(model_path: str | Path, path: str | Path, spec: AdapterSpec) -> Path:
    """Write a LoRA or DoRA adapter for the model at ``model_path``, random but non-zero."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, _ = load_model(Path(model_path))
    model.freeze()
    lora_parameters = {
        "rank": spec.rank,
        "scale": spec.scale,
        "dropout": 0.0,
        "keys": list(spec.keys),
    }
    mx.random.seed(spec.seed)
    linear_to_lora_layers(model, spec.num_layers, lora_parameters,
                          use_dora=spec.fine_tune_type == "dora")
    weights = dict(tree_flatten(model.trainable_parameters()))
    for name, w in list(weights.items()):
        if name.endswith("lora_b"):
            # mlx-lm initialises lora_b to zero (an adapter that changes nothing);
            # a demo adapter must visibly change the output.
            weights[name] = (mx.random.normal(w.shape) * 0.05).astype(w.dtype)
        elif name.endswith(".m"):
            weights[name] = w * (1.0 + 0.2 * mx.random.normal(w.shape)).astype(w.dtype)
    mx.eval(weights)
    mx.save_safetensors(str(path / "adapters.safetensors"), weights)
    config = {
        "fine_tune_type": spec.fine_tune_type,
        "num_layers": spec.num_layers,
        "lora_parameters": lora_parameters,
        # The model's name, not the folder it was built in (a temporary one for the kit,
        # which no longer exists once the kit is in place): the details view shows it.
        "model": Path(model_path).name,
        "workbench_demo": {"version": DEMO_VERSION, "seed": spec.seed},
    }
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return path


@dataclass(frozen=True)
class DemoKit:
    """Where ``build_demo`` put everything."""

    root: Path

    @property
    def llama(self) -> Path:
        return self.root / "llama"

    @property
    def qwen3(self) -> Path:
        return self.root / "qwen3"

    @property
    def qwen3_think(self) -> Path:
        """A reasoning model: its template writes and strips <think> blocks."""
        return self.root / QWEN3_THINK.name

    @property
    def llama_4bit(self) -> Path:
        return self.root / "llama-4bit"

    @property
    def qwen3_4bit(self) -> Path:
        return self.root / "qwen3-4bit"

    def adapters(self, model: str = "llama") -> Path:
        """The folder of adapter folders made for ``model`` (and its 4-bit twin)."""
        return self.root / "adapters" / model

    def adapter(self, name: str, model: str = "llama") -> Path:
        return self.adapters(model) / name

    @property
    def chat(self) -> Path:
        """The trained demo chat model: readable replies, the one the app opens on."""
        return self.root / CHAT_MODEL

    @property
    def chat_adapters(self) -> Path:
        """The folder of the chat model's adapters (pirate, brief)."""
        return self.adapters(CHAT_MODEL)

    @property
    def default_model(self) -> Path:
        return self.chat

    @property
    def train_data(self) -> Path:
        """``train.jsonl`` and ``valid.jsonl`` for training an adapter on the chat model."""
        return self.root / "train-data"


def write_train_data(folder: Path) -> Path:
    """The shipped demo dataset (``TRAIN_CHAT``) as mlx-lm's jsonl files in ``folder``."""
    doc = json.loads(TRAIN_CHAT.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "valid"):
        rows = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in doc[name])
        (folder / f"{name}.jsonl").write_text(rows, encoding="utf-8")
    return folder


def install_chat(root: Path) -> None:
    """Copy the shipped demo chat model and its adapters into the kit at ``root``."""
    shutil.copytree(CHAT_ASSETS / CHAT_MODEL, root / CHAT_MODEL)
    target = DemoKit(root).chat_adapters
    shipped = CHAT_ASSETS / "adapters"
    for adapter in sorted(shipped.iterdir()) if shipped.is_dir() else []:
        if adapter.is_dir():
            shutil.copytree(adapter, target / adapter.name)


def install_reasoning(root: Path) -> None:
    """Copy the shipped reasoning demo (``python -m models.demo_think`` made it) into the kit
    at ``root``; without it (a source tree that lost it), build it untaught."""

    shipped = THINK_ASSETS / QWEN3_THINK.name
    if shipped.is_dir():
        shutil.copytree(shipped, root / QWEN3_THINK.name)
    else:
        build_model(root / QWEN3_THINK.name, QWEN3_THINK)


def _stamp(root: Path) -> str:
    # The shipped chat model's manifest too: new weights in a release replace an old kit.
    try:

        think = THINK_ASSETS / QWEN3_THINK.name
        shipped = (CHAT_ASSETS / "RECIPE.json").read_bytes() + TRAIN_CHAT.read_bytes() + b"".join(
            f.read_bytes() for f in sorted(think.rglob("*")) if f.is_file())
    except OSError:
        shipped = b""
    return hashlib.sha256(f"workbench-demo-v{DEMO_VERSION}".encode() + shipped).hexdigest()[:16]


def build_demo(root: str | Path, progress: Progress | None = None) -> DemoKit:
    """Build the whole kit (both models, 4-bit twins, adapters, and a copy of the shipped
    chat model with its adapters) into ``root``.

    Written to a temporary folder beside ``root`` and renamed into place, so an interrupted
    build never leaves a half-made kit that looks whole. ``root`` must be new, empty or an
    earlier kit (``check_kit_folder``): anything else raises ``DemoFolderTaken`` untouched.
    """
    say = progress or (lambda _msg: None)
    root = Path(root)
    check_kit_folder(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        kit = DemoKit(tmp)
        for spec in (LLAMA, QWEN3):
            say(f"building the {spec.name} demo model")
            build_model(tmp / spec.name, spec)
            say(f"quantizing the {spec.name} demo model to 4 bits")
            quantize(tmp / spec.name, tmp / f"{spec.name}-4bit", bits=4)
            for adapter in ADAPTERS:
                build_adapter(tmp / spec.name, kit.adapter(adapter.name, spec.name), adapter)
        say("installing the reasoning demo model")
        install_reasoning(tmp)
        say("installing the demo chat model")
        install_chat(tmp)
        write_train_data(kit.train_data)
        (tmp / STAMP_FILE).write_text(_stamp(root))
        check_kit_folder(root)  # again: it may have changed during the build
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"demo models written to {root}")
    return DemoKit(root)


def is_built(root: str | Path) -> bool:
    root = Path(root)
    stamp = root / STAMP_FILE
    return stamp.is_file() and stamp.read_text() == _stamp(root)


def ensure_demo(root: str | Path, progress: Progress | None = None) -> DemoKit:
    """Return the kit at ``root``, building it first if it is missing or out of date."""
    if is_built(root):
        return DemoKit(Path(root))
    return build_demo(root, progress)


def _demo_mark(path: str | Path) -> Any:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg.get("workbench_demo") if isinstance(cfg, dict) else None


def is_demo_model(path: str | Path) -> bool:
    """True for a folder this kit made (its config carries a ``workbench_demo`` mark)."""
    return _demo_mark(path) is not None


def is_trained_demo(path: str | Path) -> bool:
    """True for the trained demo chat model and any model made from it (a fused adapter, a
    quantized copy: they keep its config's mark, whatever their folder is called), as
    opposed to the kit's random-weight models."""
    mark = _demo_mark(path)
    return isinstance(mark, dict) and mark.get("kind") == "chat"
