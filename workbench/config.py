"""The user's TOML config: read with tomllib, written atomically with tomli-w.

A bad config never stops the app: each bad key is reported (``Config.problems``) with what
is wrong, and its default is used instead.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from common.errors import BadSetting
from engine.sampling import SamplingParams

from . import paths

DEFAULT_THEME = "workbench-dark"
RECOMMENDED_MODEL = "mlx-community/Qwen3-0.6B-4bit"


@dataclass(frozen=True)
class Config:
    model: str = ""
    theme: str = DEFAULT_THEME
    system_prompt: str = ""
    adapters_dir: str = ""
    sessions_dir: str = ""
    recommended_model: str = RECOMMENDED_MODEL
    max_kv_size: int = 0  # 0: the model's own context length
    # [decoding] (engine/speculative.py): draft_model, num_draft_tokens, prompt_lookup,
    # prompt_lookup_ngram, kv_bits, kv_group_size, quantized_kv_start; flags win.
    decoding: dict[str, Any] = field(default_factory=dict)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    keys: dict[str, str] = field(default_factory=dict)  # binding id -> keys ("ctrl+s,f5")
    problems: tuple[str, ...] = ()
    path: Path | None = None

    def sessions_path(self) -> Path:
        return Path(self.sessions_dir).expanduser() if self.sessions_dir else paths.sessions_dir()

    def adapters_path(self) -> Path:
        return Path(self.adapters_dir).expanduser() if self.adapters_dir else paths.adapters_dir()

    def to_toml(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("problems", "path", "sampling", "keys", "decoding"):
                continue
            data[f.name] = getattr(self, f.name)
        sampling = {k: v for k, v in self.sampling.to_dict().items() if v is not None}
        data["sampling"] = sampling
        data["keys"] = dict(self.keys)
        if self.decoding:
            data["decoding"] = dict(self.decoding)
        return data


_STRINGS = ("model", "theme", "system_prompt", "adapters_dir", "sessions_dir",
            "recommended_model")


def parse_config(data: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from TOML data, keeping defaults for every bad key."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Config)} - {"problems", "path"}
    for key in data:
        if key not in known:
            problems.append(f"{source}: unknown key {key!r} (ignored)")
    for key in _STRINGS:
        if key in data:
            if isinstance(data[key], str):
                values[key] = data[key]
            else:
                problems.append(f"{source}: {key} must be text, not {_short(data[key])}")
    if "max_kv_size" in data:
        v = data["max_kv_size"]
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            values["max_kv_size"] = v
        else:
            problems.append(f"{source}: max_kv_size must be a whole number >= 0, not {_short(v)}")
    sampling = SamplingParams()
    raw = data.get("sampling", {})
    if not isinstance(raw, dict):
        problems.append(f"{source}: [sampling] must be a table")
        raw = {}
    for key, value in raw.items():
        try:
            sampling = sampling.with_values(**{key: value})
        except BadSetting as exc:
            problems.append(f"{source}: [sampling] {exc}")
    raw_keys = data.get("keys", {})
    keys: dict[str, str] = {}
    if not isinstance(raw_keys, dict):
        problems.append(f"{source}: [keys] must be a table of binding ids and key names")
        raw_keys = {}
    for binding, value in raw_keys.items():
        if isinstance(value, str):
            keys[binding] = value
        else:  # this one is skipped; the rest of [keys] still applies
            problems.append(f"{source}: [keys] {binding} must be key names as text, such as "
                            f"\"ctrl+s,f5\", not {_short(value)} (ignored)")
    decoding = _decoding(data.get("decoding", {}), source, problems)
    return Config(**values, sampling=sampling, keys=keys, decoding=decoding,
                  problems=tuple(problems))


DECODING_KEYS = {"draft_model": str, "num_draft_tokens": int, "prompt_lookup": int,
                 "prompt_lookup_ngram": int, "kv_bits": int, "kv_group_size": int,
                 "quantized_kv_start": int}


def _decoding(raw: Any, source: str, problems: list[str]) -> dict[str, Any]:
    """The [decoding] table: each key checked with the engine's rules; a bad one is left
    out (and reported), the rest apply."""
    if not isinstance(raw, dict):
        problems.append(f"{source}: [decoding] must be a table")
        return {}
    from engine.speculative import DecodingSettings, KVSettings

    kept: dict[str, Any] = {}
    for key, value in raw.items():
        kind = DECODING_KEYS.get(key)
        if kind is None:
            problems.append(f"{source}: [decoding] unknown key {key!r} (ignored)")
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            problems.append(f"{source}: [decoding] {key} must be "
                            f"{'text' if kind is str else 'a whole number'}, not "
                            f"{_short(value)} (ignored)")
            continue
        trial = {**kept, key: value}
        try:
            KVSettings(trial.get("kv_bits"), trial.get("kv_group_size", 64),
                       trial.get("quantized_kv_start", 5000))
            DecodingSettings(num_draft_tokens=trial.get("num_draft_tokens", 3),
                             prompt_lookup=trial.get("prompt_lookup", 0),
                             lookup_ngram=trial.get("prompt_lookup_ngram", 3))
        except BadSetting as exc:
            problems.append(f"{source}: [decoding] {exc} (ignored)")
            continue
        kept[key] = value
    return kept


def _short(value: Any, limit: int = 40) -> str:
    """``repr`` of a config value, cut to one short line."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_config(path: Path | None = None) -> Config:
    path = path or paths.config_file()
    if not path.exists():
        return Config(path=path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return Config(path=path, problems=(f"{path}: cannot be read ({exc}); using defaults",))
    except tomllib.TOMLDecodeError as exc:
        return Config(path=path, problems=(f"{path}: not valid TOML ({exc}); using defaults",))
    except RecursionError:  # e.g. `a = [[[[...` nested thousands deep
        return Config(path=path, problems=(f"{path}: nested too deeply to be read (a value "
                                           "inside thousands of brackets?); using defaults",))
    try:
        return replace(parse_config(data, str(path)), path=path)
    except RecursionError:
        return Config(path=path, problems=(f"{path}: a value is nested too deeply to be used; "
                                           "using defaults",))


def save_config(config: Config, path: Path | None = None) -> Path:
    path = path or config.path or paths.config_file()
    from common.atomic import atomic_write  # its package loads only when a file is written

    atomic_write(path, tomli_w.dumps(config.to_toml()).encode("utf-8"))
    return path
