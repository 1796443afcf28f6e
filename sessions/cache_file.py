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

import functools
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.atomic import atomic_write_with
from common.safetensors_header import SafetensorsHeaderError, read_safetensors_header
from models.fingerprint import model_fingerprint

if TYPE_CHECKING:
    from engine.protocol import CacheCore

CACHE_SCHEMA = 1
KEY_SCHEMA = "workbench_schema"
KEY_FINGERPRINT = "workbench_fingerprint"
KEY_ADAPTER = "workbench_adapter"
KEY_TOKENS = "workbench_tokens"
KEY_DIGEST = "workbench_digest"
# The KV quantization the entries were written with ("" = full precision; see
# EngineCore.kv_identity): a cache is restored only under the same settings.
KEY_KV = "workbench_kv"
DIGEST_KIND = "xxh3-64"


class CacheUnusable(Exception):
    """Why a cache file cannot be used; ``str()`` completes "the saved prompt cache ..."."""


@dataclass(frozen=True)
class CacheHeader:
    """What a cache file says about itself, read without loading any tensor."""

    metadata: dict[str, str]  # the user metadata given to save_prompt_cache
    classes: list[str]  # one cache class name per layer
    file_bytes: int

    @functools.cached_property
    def tokens(self) -> list[int] | None:
        """The token ids (read once: at 32k tokens parsing them is not free)."""
        try:
            tokens = json.loads(self.metadata.get(KEY_TOKENS, ""))
        except ValueError:
            return None
        if isinstance(tokens, list) and set(map(type, tokens)) <= {int} \
                and (not tokens or min(tokens) >= 0):
            return tokens
        return None


_headers: dict[str, tuple[tuple[int, int, int, int], CacheHeader]] = {}
_headers_lock = threading.Lock()


def read_cache_header(path: Path) -> CacheHeader:
    """The header of the cache file at ``path``; ``CacheUnusable`` if it is damaged.

    Remembered while the file is unchanged (same inode, size and modification time): an
    incremental save reads its base's header every turn, and at 32k tokens parsing the
    token ids costs tens of milliseconds. (The tensor data is checked on every load.)"""
    try:
        st = os.stat(path)
        key: tuple[int, int, int, int] | None = (st.st_dev, st.st_ino, st.st_size,
                                                 st.st_mtime_ns)
    except OSError:
        key = None
    with _headers_lock:
        hit = _headers.get(str(path))
    if key is not None and hit is not None and hit[0] == key:
        return hit[1]
    try:
        header = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        raise CacheUnusable(exc.reason) from None
    raw = header.metadata  # mlx-lm writes "0.KEY" for user metadata, "1.N" per layer class
    metadata = {k[2:]: v for k, v in raw.items() if k.startswith("0.")}
    layers = {int(k[2:]): v for k, v in raw.items() if k.startswith("1.") and k[2:].isdigit()}
    cache_header = CacheHeader(metadata, [layers[i] for i in sorted(layers)], header.file_bytes)
    if key is not None:
        with _headers_lock:
            if len(_headers) > 16:
                _headers.clear()
            _headers[str(path)] = (key, cache_header)
    return cache_header


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


def write_cache(core: CacheCore, path: Path, cache: list[Any], tokens: list[int],
                model_ref: str) -> str:
    """Write ``cache`` (holding ``tokens``) to ``path`` atomically, with its checks; returns
    the checksum written (``sessions.cache_segments`` names the file by it)."""
    from mlx_lm.models.cache import save_prompt_cache

    assert core.info is not None
    metadata = {
        "model": model_ref,
        "tokenizer_config": json.dumps({}),
        KEY_SCHEMA: str(CACHE_SCHEMA),
        KEY_FINGERPRINT: model_fingerprint(core.info.path),
        KEY_ADAPTER: core.adapter_identity(),
        KEY_KV: core.kv_identity(),
        KEY_TOKENS: json.dumps(tokens, separators=(",", ":")),
        KEY_DIGEST: tensor_digest(cache),
    }
    atomic_write_with(path, lambda tmp: save_prompt_cache(str(tmp), cache, metadata),
                      suffix=".tmp.safetensors")
    return metadata[KEY_DIGEST]


def check_header(core: CacheCore, path: Path) -> CacheHeader:
    """The header of ``path`` if it says the file was made by this model under this adapter
    with this model's layer kinds (no tensor is read); else ``CacheUnusable``."""
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
    kv = core.kv_identity()
    if meta.get(KEY_KV, "") != kv:
        raise CacheUnusable(f"was made with other KV-cache settings "
                            f"({meta.get(KEY_KV) or 'full precision'}, now "
                            f"{kv or 'full precision'})")
    if header.tokens is None:
        raise CacheUnusable("is damaged (its token ids are unreadable)")
    expected = [type(c).__name__ for c in core.new_cache()]
    if not same_kinds(header.classes, expected):
        raise CacheUnusable(f"does not fit this model ({len(header.classes)} layer caches, "
                            f"the model has {len(expected)})")
    return header


def same_kinds(saved: list[str], model: list[str]) -> bool:
    """The saved layer kinds fit the model's: the same, except that a plain K/V layer may
    have been quantized (mlx-lm's ``--kv-bits`` turns ``KVCache`` into ``QuantizedKVCache``
    as the conversation grows)."""
    return len(saved) == len(model) and all(
        s == m or (s, m) == ("QuantizedKVCache", "KVCache") for s, m in zip(saved, model,
                                                                            strict=True))


def load_checked(core: CacheCore, path: Path) -> tuple[list[Any], list[int]]:
    """Load ``path`` if it was made by this model under this adapter and its tensor data is
    intact; else ``CacheUnusable`` with the reason."""
    cache, tokens, _digest = load_checked_digest(core, path)
    return cache, tokens


def load_checked_digest(core: CacheCore, path: Path) -> tuple[list[Any], list[int], str]:
    """``load_checked``, and the checksum the file carries (what a segment manifest names
    its base by)."""
    from mlx_lm.models.cache import load_prompt_cache

    header = check_header(core, path)
    tokens = header.tokens
    assert tokens is not None
    try:
        cache = load_prompt_cache(str(path))
    except Exception:  # noqa: BLE001 - RuntimeError/ValueError/KeyError for a damaged file
        raise CacheUnusable("is damaged (its tensors cannot be loaded)") from None
    want = header.metadata.get(KEY_DIGEST)
    if want is None:
        raise CacheUnusable("has no checksum (it was written by an older workbench)")
    if tensor_digest(cache) != want:
        raise CacheUnusable("is damaged (its tensor data does not match its checksum)")
    for c in cache:
        offset = getattr(c, "offset", None)
        if isinstance(offset, int) and offset != len(tokens):
            raise CacheUnusable(f"is damaged (it holds {offset} entries for {len(tokens)} "
                                "tokens)")
    return cache, tokens, want
