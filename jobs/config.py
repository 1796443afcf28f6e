"""What a training run is asked to do: mlx-lm's ``lora`` arguments, under their own names and
defaults, plus the workbench's own (early stopping, data from sessions).

``TrainConfig.to_mlx_args()`` is exactly the argument set ``mlx_lm lora --train`` would build
from the same flags and ``-c`` file (flags over the file over ``CONFIG_DEFAULTS``), so the
trainer gets the same namespace and writes the same ``adapter_config.json``. mlx-lm is not
imported here (its ``lora`` module pulls in rich): ``CONFIG_DEFAULTS`` and the YAML loader
are mirrored, and a test compares them with mlx-lm's own.
"""

from __future__ import annotations

import argparse
import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from common.errors import BadSetting

# mlx_lm/lora.py CONFIG_DEFAULTS (mlx-lm 0.32.2); tests/test_train_config.py keeps them equal.
CONFIG_DEFAULTS: dict[str, Any] = {
    "model": "Qwen/Qwen3-0.6b",
    "train": False,
    "fine_tune_type": "lora",
    "optimizer": "adam",
    "optimizer_config": {"adam": {}, "adamw": {}, "muon": {}, "sgd": {}, "adafactor": {}},
    "data": "mlx-community/WikiSQL",
    "seed": 0,
    "num_layers": 16,
    "batch_size": 4,
    "iters": 1000,
    "val_batches": 25,
    "learning_rate": 1e-5,
    "steps_per_report": 10,
    "steps_per_eval": 200,
    "resume_adapter_file": None,
    "adapter_path": "adapters",
    "save_every": 100,
    "test": False,
    "test_batches": 500,
    "max_seq_length": 2048,
    "config": None,
    "grad_checkpoint": False,
    "grad_accumulation_steps": 1,
    "clear_cache_threshold": 0,
    "lr_schedule": None,
    "lora_parameters": {"rank": 8, "dropout": 0.0, "scale": 20.0},
    "mask_prompt": False,
    "report_to": None,
    "project_name": None,
    "trust_remote_code": False,
}

FINE_TUNE_TYPES = ("lora", "dora", "full")
OPTIMIZERS = ("adam", "adamw", "muon", "sgd", "adafactor")

# Named starting points, applied over CONFIG_DEFAULTS and under a -c file and the flags.
PRESETS: dict[str, dict[str, Any]] = {
    # The demo: under a minute on two CPU cores for the demo chat model, loss visibly falling.
    "quick": {"iters": 50, "batch_size": 4, "learning_rate": 5e-4, "num_layers": -1,
              "steps_per_report": 5, "steps_per_eval": 10, "val_batches": -1,
              "save_every": 50, "max_seq_length": 512, "mask_prompt": True},
    "default": {},  # mlx-lm's own defaults
    # Longer, validated often, stopped early when the validation loss stops improving.
    "thorough": {"iters": 3000, "batch_size": 8, "learning_rate": 1e-5, "num_layers": -1,
                 "steps_per_report": 20, "steps_per_eval": 100, "val_batches": -1,
                 "save_every": 500, "patience": 5},
}


def _yaml_loader() -> Any:
    """mlx-lm's YAML loader: SafeLoader that also reads ``1e-5`` as a float."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            """^(?:
     [-+]?(?:[0-9][0-9_]*)\\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\\.[0-9_]*
    |[-+]?\\.(?:inf|Inf|INF)
    |\\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return Loader


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A ``-c`` YAML file as mlx-lm reads it; one-line ``BadSetting`` when it cannot be."""
    import yaml

    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise BadSetting(f"config file {path} cannot be read ({exc.strerror or exc}): give a "
                         "YAML file of mlx-lm lora options") from None
    except UnicodeDecodeError:
        raise BadSetting(f"config file {path} is not UTF-8 text: give a YAML file of mlx-lm "
                         "lora options") from None
    try:
        data = yaml.load(text, _yaml_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "bad YAML"
        raise BadSetting(f"config file {path} is not valid YAML ({first}): fix it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadSetting(f"config file {path} must hold a mapping of option: value, not "
                         f"{type(data).__name__}")
    return data


@dataclass
class TrainConfig:
    """mlx-lm's lora keys (same names and defaults) plus the workbench's own.

    ``data`` is a folder of ``train.jsonl``/``valid.jsonl`` (mlx-lm's formats); with
    ``sessions`` (names in ``sessions_dir``) the examples come from saved sessions instead,
    ``valid_share`` of them held out for validation. ``conversations`` takes sessions that
    are not saved (``sessions.Session`` objects, e.g. the app's current conversation).
    ``extra`` carries any other key of a ``-c`` file to mlx-lm unchanged.
    """

    model: str = ""
    data: str = ""
    adapter_path: str = "adapters"
    fine_tune_type: str = "lora"
    num_layers: int = 16
    batch_size: int = 4
    iters: int = 1000
    val_batches: int = 25
    learning_rate: float = 1e-5
    steps_per_report: int = 10
    steps_per_eval: int = 200
    save_every: int = 100
    max_seq_length: int = 2048
    grad_checkpoint: bool = False
    grad_accumulation_steps: int = 1
    mask_prompt: bool = False
    seed: int = 0
    optimizer: str = "adam"
    optimizer_config: dict[str, Any] = field(
        default_factory=lambda: copy.deepcopy(CONFIG_DEFAULTS["optimizer_config"]))
    lora_parameters: dict[str, Any] = field(
        default_factory=lambda: {"rank": 8, "dropout": 0.0, "scale": 20.0})
    lr_schedule: dict[str, Any] | None = None
    resume_adapter_file: str | None = None
    clear_cache_threshold: int = 0
    trust_remote_code: bool = False
    config: str | None = None  # the -c file, recorded as mlx-lm records it
    extra: dict[str, Any] = field(default_factory=dict)
    # -- the workbench's own ------------------------------------------------------------
    patience: int | None = None  # stop after this many validations without a new best
    sessions: list[str] = field(default_factory=list)
    sessions_dir: str = ""
    conversations: list[Any] = field(default_factory=list)
    valid_share: float = 0.1
    only_good: bool = False
    preset: str | None = None

    # -- building ------------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrainConfig:
        """A config from a mapping of mlx-lm and workbench keys; unknown keys go to
        ``extra`` (mlx-lm receives them, as it does a -c file's)."""
        names = {f.name for f in fields(cls)}
        known = {k: copy.deepcopy(v) for k, v in values.items() if k in names}
        extra = {k: copy.deepcopy(v) for k, v in values.items()
                 if k not in names and k not in _MLX_ONLY}
        known.setdefault("extra", {}).update(extra)
        config = cls(**known)
        config.check()
        return config

    @classmethod
    def from_args(cls, args: argparse.Namespace | Mapping[str, Any],
                  preset: str | None = None) -> TrainConfig:
        """mlx-lm's precedence: flags given (not None) over the ``-c`` file
        (``args.config``) over the preset over ``CONFIG_DEFAULTS``. Only keys of mlx-lm's
        or of this class are read from ``args`` (a command's other flags are not mlx-lm's)."""
        given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
        preset = preset or given.get("preset")
        # mlx-lm's default model and data are Hub repos: never a silent download here.
        values: dict[str, Any] = {k: copy.deepcopy(v) for k, v in CONFIG_DEFAULTS.items()
                                  if k not in (*_MLX_ONLY, "model", "data")}
        if preset:
            if preset not in PRESETS:
                raise BadSetting(f"no training preset named {preset!r}: choose one of "
                                 f"{', '.join(PRESETS)}")
            values.update(copy.deepcopy(PRESETS[preset]))
        config_file = given.get("config")
        if config_file:
            values.update(read_config_file(config_file))
            values["config"] = str(config_file)
        names = {f.name for f in fields(cls)} | set(CONFIG_DEFAULTS)
        for key, value in given.items():
            if value is not None and key in names and key not in ("config", "preset", "extra"):
                values[key] = value
        values["preset"] = preset
        return cls.from_values(values)

    def check(self) -> None:
        """One-line ``BadSetting`` for a value mlx-lm would reject later (or worse, not)."""
        if self.fine_tune_type not in FINE_TUNE_TYPES:
            raise BadSetting(f"fine_tune_type {self.fine_tune_type!r} is not one of "
                             f"{', '.join(FINE_TUNE_TYPES)}")
        if str(self.optimizer).lower() not in OPTIMIZERS:
            raise BadSetting(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        for name in ("batch_size", "iters", "steps_per_report", "steps_per_eval", "save_every",
                     "max_seq_length", "grad_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BadSetting(f"{name} must be a whole number of 1 or more, not {value!r}")
        if self.num_layers == 0 or self.num_layers < -1:
            raise BadSetting(f"num_layers must be 1 or more, or -1 for all layers, not "
                             f"{self.num_layers}")
        if self.val_batches == 0 or self.val_batches < -1:
            raise BadSetting(f"val_batches must be 1 or more, or -1 for the whole validation "
                             f"set, not {self.val_batches}")
        if not isinstance(self.learning_rate, int | float) or not self.learning_rate > 0:
            raise BadSetting(f"learning_rate must be a positive number, not "
                             f"{self.learning_rate!r}")
        if self.fine_tune_type != "full":
            lp = self.lora_parameters
            if not isinstance(lp, dict) or any(k not in lp for k in ("rank", "scale", "dropout")):
                raise BadSetting("lora_parameters must give rank, scale and dropout (mlx-lm's "
                                 "names; 'alpha' is called 'scale' there)")
        if self.patience is not None and (isinstance(self.patience, bool)
                                          or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise BadSetting(f"patience must be 1 or more validations, not {self.patience!r}")
        if not 0 <= float(self.valid_share) < 1:
            raise BadSetting(f"valid_share must be from 0 up to (not including) 1, not "
                             f"{self.valid_share}")
        if not str(self.adapter_path).strip():
            raise BadSetting("no adapter folder given: pass --adapter-path OUT")

    # -- for mlx-lm ----------------------------------------------------------------------
    def to_mlx_args(self) -> dict[str, Any]:
        """The namespace ``mlx_lm lora --train`` builds for the same settings: every key of
        its ``CONFIG_DEFAULTS`` (and of a ``-c`` file), nothing of the workbench's."""
        args: dict[str, Any] = {k: copy.deepcopy(v) for k, v in CONFIG_DEFAULTS.items()}
        for f in fields(self):
            if f.name in CONFIG_DEFAULTS:
                args[f.name] = copy.deepcopy(getattr(self, f.name))
        args.update(copy.deepcopy(self.extra))
        args["train"] = True
        args["model"] = str(self.model)
        args["data"] = str(self.data)
        args["adapter_path"] = str(self.adapter_path)
        return args

    def workbench_settings(self) -> dict[str, Any]:
        """The workbench's own keys, as ``training.json`` records them."""
        return {"patience": self.patience, "sessions": list(self.sessions),
                "valid_share": self.valid_share, "only_good": self.only_good,
                "preset": self.preset}


# Keys of CONFIG_DEFAULTS that TrainConfig does not hold (a command-line run never sets them
# to anything else here): to_mlx_args() fills them in from CONFIG_DEFAULTS.
_MLX_ONLY = ("train", "test", "test_batches", "report_to", "project_name")
