"""The prompt-cache file: a standard mlx-lm prompt cache with the workbench's checks inside.

``write_cache`` saves layer caches with ``mlx_lm``'s ``save_prompt_cache`` (so ``mlx_lm
generate --prompt-cache-file`` reads the file), adding to its metadata the schema version,
the model's fingerprint, the adapter identity, the token ids the keys and values belong to,
and a checksum of the tensor data (xxh3-64 over every array's bytes, in order). ``load_checked``
trusts a file only when all of those agree with the loaded model and with the bytes it read:
header damage, another model of the same shapes, another adapter, and flipped bits in the
tensor data all raise ``CacheUnusable`` with the reason, never a silently wrong reply.

Reading the header needs no MLX (``read_cache_header``); writing and loading run on the
engine thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.safetensors_header import SafetensorsHeaderError, read_safetensors_header

from .files import atomic_write_with
from .fingerprint import model_fingerprint

if TYPE_CHECKING:
    from engine import EngineCore

CACHE_SCHEMA = 1
KEY_SCHEMA = "workbench_schema"
KEY_FINGERPRINT = "workbench_fingerprint"
KEY_ADAPTER = "workbench_adapter"
KEY_TOKENS = "workbench_tokens"
KEY_DIGEST = "workbench_digest"
DIGEST_KIND = "xxh3-64"


class CacheUnusable(Exception):
    """Why a cache file cannot be used; ``str()`` completes "the saved prompt cache ..."."""


@dataclass(frozen=True)
class CacheHeader:
    """What a cache file says about itself, read without loading any tensor."""

    metadata: dict[str, str]  # the user metadata given to save_prompt_cache
    classes: list[str]  # one cache class name per layer
    file_bytes: int

    @property
    def tokens(self) -> list[int] | None:
        try:
            tokens = json.loads(self.metadata.get(KEY_TOKENS, ""))
        except ValueError:
            return None
        if isinstance(tokens, list) and all(type(t) is int and t >= 0 for t in tokens):
            return tokens
        return None


def read_cache_header(path: Path) -> CacheHeader:
    """The header of the cache file at ``path``; ``CacheUnusable`` if it is damaged."""
    try:
        header = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        raise CacheUnusable(exc.reason) from None
    raw = header.metadata  # mlx-lm writes "0.KEY" for user metadata, "1.N" per layer class
    metadata = {k[2:]: v for k, v in raw.items() if k.startswith("0.")}
    layers = {int(k[2:]): v for k, v in raw.items() if k.startswith("1.") and k[2:].isdigit()}
    return CacheHeader(metadata, [layers[i] for i in sorted(layers)], header.file_bytes)


def tensor_digest(cache: Iterable[Any]) -> str:
    """``xxh3-64:HEX`` over every array (and scalar) the layer caches save, in order."""
    import mlx.core as mx
    import xxhash
    from mlx.utils import tree_flatten

    digest = xxhash.xxh3_64()
    for name, value in tree_flatten([c.state for c in cache]):
        digest.update(name.encode())
        if isinstance(value, mx.array):
            contiguous = mx.contiguous(value)
            mx.eval(contiguous)
            digest.update(memoryview(contiguous))  # type: ignore[arg-type]
        else:  # the scalars a cache saves with its arrays (offsets, sizes)
            digest.update(repr(value).encode())
    return f"{DIGEST_KIND}:{digest.hexdigest()}"


def write_cache(core: EngineCore, path: Path, cache: list[Any], tokens: list[int],
                model_ref: str) -> None:
    """Write ``cache`` (holding ``tokens``) to ``path`` atomically, with its checks."""
    from mlx_lm.models.cache import save_prompt_cache

    assert core.info is not None
    metadata = {
        "model": model_ref,
        "tokenizer_config": json.dumps({}),
        KEY_SCHEMA: str(CACHE_SCHEMA),
        KEY_FINGERPRINT: model_fingerprint(core.info.path),
        KEY_ADAPTER: core.adapter_identity(),
        KEY_TOKENS: json.dumps(tokens, separators=(",", ":")),
        KEY_DIGEST: tensor_digest(cache),
    }
    atomic_write_with(path, lambda tmp: save_prompt_cache(str(tmp), cache, metadata),
                      suffix=".tmp.safetensors")


def load_checked(core: EngineCore, path: Path) -> tuple[list[Any], list[int]]:
    """Load ``path`` if it was made by this model under this adapter and its tensor data is
    intact; else ``CacheUnusable`` with the reason."""
    from mlx_lm.models.cache import load_prompt_cache

    assert core.info is not None
    if not path.exists():
        raise CacheUnusable("is missing")
    header = read_cache_header(path)
    meta = header.metadata
    schema = meta.get(KEY_SCHEMA)
    if schema is None:
        raise CacheUnusable("is not a workbench prompt cache")
    if schema != str(CACHE_SCHEMA):
        raise CacheUnusable(f"has schema {schema}, not {CACHE_SCHEMA}")
    if meta.get(KEY_FINGERPRINT) != model_fingerprint(core.info.path):
        raise CacheUnusable(f"was made with another model ({meta.get('model', '?')})")
    adapter = core.adapter_identity()
    if meta.get(KEY_ADAPTER, "") != adapter:
        then = meta.get(KEY_ADAPTER) or "no adapter"
        raise CacheUnusable(f"was made under another adapter ({then}, now "
                            f"{adapter or 'no adapter'})")
    tokens = header.tokens
    if tokens is None:
        raise CacheUnusable("is damaged (its token ids are unreadable)")
    expected = [type(c).__name__ for c in core.new_cache()]
    if header.classes != expected:
        raise CacheUnusable(f"does not fit this model ({len(header.classes)} layer caches, "
                            f"the model has {len(expected)})")
    try:
        cache = load_prompt_cache(str(path))
    except Exception:  # noqa: BLE001 - RuntimeError/ValueError/KeyError for a damaged file
        raise CacheUnusable("is damaged (its tensors cannot be loaded)") from None
    want = meta.get(KEY_DIGEST)
    if want is None:
        raise CacheUnusable("has no checksum (it was written by an older workbench)")
    if tensor_digest(cache) != want:
        raise CacheUnusable("is damaged (its tensor data does not match its checksum)")
    for c in cache:
        offset = getattr(c, "offset", None)
        if isinstance(offset, int) and offset != len(tokens):
            raise CacheUnusable(f"is damaged (it holds {offset} entries for {len(tokens)} "
                                "tokens)")
    return cache, tokens
