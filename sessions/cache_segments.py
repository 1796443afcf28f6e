"""Incremental prompt-cache saves: ``NAME.cache/``, an append-only folder of K/V segments.

Why: rewriting ``NAME.safetensors`` after every turn costs the whole context each time (an
8B-shaped model at 32k tokens holds about 4 GB of keys and values) for the few hundred
tokens a turn adds. Here an autosave writes only what the turn added.

The layout (all of it written by the workbench, in a folder it made and marked):

- ``NAME.safetensors``, the *base*: the standard mlx-lm prompt cache (``cache_file``), which
  ``mlx_lm generate --prompt-cache-file`` reads. It is written whole on the first save of a
  session, on an explicit save (``/save``), when the session is closed or the app quits, and
  after a re-prefill; between those it is left as it is.
- ``NAME.cache/manifest.json``: the commit point. It names the base (by the checksum in its
  header, and how many of its tokens are used) and the *segments* that follow it, in order,
  each with its token range ``[start, end)`` and checksum; and the model fingerprint, adapter
  identity and layer kinds they were made under. Written atomically (temp file, fsync,
  ``os.replace``, fsync of the folder).
- ``NAME.cache/seg-START-END-RAND.safetensors``: the K/V entries of every layer for the
  tokens ``[start, end)``, the token ids and an xxh3-64 checksum over both in the metadata.
  Written to a temp file, fsynced, renamed, and the folder fsynced, all before the manifest
  that names it.

An autosave (``save_incremental``) compares the tokens to keep (the snapshot, cut to what
agrees with the transcript) with the saved ones. The segments that lie wholly inside the
common prefix stay; a segment that straddles the point where they part (an edit, a branch,
a regenerated reply) is dropped with everything after it, and one new segment is written
from the end of the last kept one. If they part inside the base, the manifest just uses
fewer of the base's tokens. Then the new manifest replaces the old, and only then are the
files it no longer names deleted. So a save costs the new tokens (plus, after a divergence,
at most the one straddling segment), never the context.

A power cut at any moment leaves the old manifest (naming complete, fsynced files) or the
new one; a segment or temp file no manifest names is ignored and cleaned up by the next
save. A segment that is damaged anyway (disk trouble, someone's editor) fails its checksum
on resume: the longest valid prefix is used and the rest is read again from the transcript
(``sessions.cache_resume.resume``). If the base was rewritten (a full save) and the power went
before the manifest followed, the manifest's base checksum no longer matches: the newer
base alone is used. Sessions with only ``NAME.safetensors`` (older workbenches) resume as
before, and their next autosave adopts that file as the base.

Caches whose layers cannot be cut into token ranges (sliding-window ``RotatingKVCache``,
recurrent states: anything but ``KVCache`` and ``QuantizedKVCache``) are saved whole, as
before. Quantized K/V caches are cut per component (packed values, scales, biases), all of
which carry the token axis at -2.

More than ``MAX_SEGMENTS`` segments (hundreds of turns without a close) make the next save a
whole one, which starts the chain again: its cost is spread over those turns.

Nothing is deleted unless the workbench made it: the folder must be a real folder (not a
link) owned by this user and holding the workbench's marker file, and only regular files
named like segments or temp files are removed.

This module is the K/V side of the chain (the functions that touch arrays, run on the engine
thread; no MLX at import time) and the save planning (``plan``). The manifest's format and
the folder on disk (``Manifest``, ``Segment``, ``SegmentFolder``, ``SegmentsUnusable``,
``saved_tokens``, ``remember``) live in ``sessions.cache_manifest`` and are re-exported here.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

from common.atomic import atomic_write_with
from common.safetensors_header import SafetensorsHeaderError, read_safetensors_header

from .cache_file import DIGEST_KIND
from .cache_manifest import MANIFEST as MANIFEST
from .cache_manifest import MANIFEST_KIND as MANIFEST_KIND
from .cache_manifest import MARKER as MARKER
from .cache_manifest import SEGMENTS_SCHEMA as SEGMENTS_SCHEMA
from .cache_manifest import SUFFIX as SUFFIX
from .cache_manifest import Manifest as Manifest
from .cache_manifest import Segment as Segment
from .cache_manifest import SegmentFolder as SegmentFolder
from .cache_manifest import SegmentsUnusable as SegmentsUnusable
from .cache_manifest import _tokens
from .cache_manifest import remember as remember
from .cache_manifest import saved_tokens as saved_tokens

MAX_SEGMENTS = 256
_CUTTABLE = ("KVCache", "QuantizedKVCache")
ROOM_STEP = 256  # mlx-lm's K/V caches grow in steps of this many tokens


# -- the arrays (engine thread) ------------------------------------------------------------
def cuttable(cache: list[Any]) -> bool:
    """True when every layer can be cut into token ranges (plain or quantized K/V)."""
    return bool(cache) and all(type(c).__name__ in _CUTTABLE and c.keys is not None
                               for c in cache)


def layer_kinds(cache: list[Any]) -> tuple[tuple[str, ...], tuple[tuple[int, int] | None, ...]]:
    classes = tuple(type(c).__name__ for c in cache)
    quant = tuple((int(c.group_size), int(c.bits)) if type(c).__name__ == "QuantizedKVCache"
                  else None for c in cache)
    return classes, quant


def _parts(layer: Any) -> dict[str, Any]:
    """Each array of a layer with the token axis at -2: ``k``/``v`` or ``k.0``.. for the
    quantized components."""
    if isinstance(layer.keys, tuple | list):
        out = {f"k.{j}": a for j, a in enumerate(layer.keys)}
        out.update({f"v.{j}": a for j, a in enumerate(layer.values)})
        return out
    return {"k": layer.keys, "v": layer.values}


def segment_arrays(cache: list[Any], start: int, end: int) -> dict[str, Any]:
    return {f"{i}.{name}": a[..., start:end, :]
            for i, layer in enumerate(cache) for name, a in _parts(layer).items()}


def segment_digest(tokens: list[int], arrays: dict[str, Any]) -> str:
    """``xxh3-64:HEX`` over the token ids and every array's name and bytes, by name."""
    import mlx.core as mx
    import xxhash

    digest = xxhash.xxh3_64()
    digest.update(json.dumps(tokens, separators=(",", ":")).encode())
    for name in sorted(arrays):
        value = mx.contiguous(arrays[name])
        mx.eval(value)
        digest.update(name.encode())
        digest.update(str(value.dtype).encode() + repr(tuple(value.shape)).encode())
        digest.update(memoryview(value))  # type: ignore[arg-type]
    return f"{DIGEST_KIND}:{digest.hexdigest()}"


def write_segment(folder: SegmentFolder, cache: list[Any], tokens: list[int], start: int,
                  end: int) -> Segment:
    """Write the entries ``[start, end)`` of every layer as one segment file (durable, under
    its final name, before any manifest names it)."""
    import mlx.core as mx

    arrays = {name: mx.contiguous(a) for name, a in segment_arrays(cache, start, end).items()}
    mx.eval(list(arrays.values()))
    part = tokens[start:end]
    digest = segment_digest(part, arrays)
    name = f"seg-{start:08d}-{end:08d}-{secrets.token_hex(4)}.safetensors"
    metadata = {"workbench_segment": str(SEGMENTS_SCHEMA), "start": str(start),
                "end": str(end), "tokens": json.dumps(part, separators=(",", ":")),
                "digest": digest}
    path = folder.path / name
    atomic_write_with(path, lambda tmp: mx.save_safetensors(str(tmp), arrays, metadata),
                      suffix=".tmp.safetensors")
    return Segment(name, start, end, digest, path.stat().st_size)


def load_segment(folder: SegmentFolder, segment: Segment, layers: int) -> tuple[dict[str, Any],
                                                                               list[int]]:
    """The arrays and token ids of one segment, checked against the manifest; else
    ``SegmentsUnusable``."""
    import mlx.core as mx

    path = folder.path / segment.file
    if not path.is_file():
        raise SegmentsUnusable(f"names a segment {segment.file} that is missing")
    try:
        header = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        raise SegmentsUnusable(f"has a segment {segment.file} that {exc.reason}") from None
    tokens = _tokens(header.metadata.get("tokens", ""))
    if tokens is None or len(tokens) != segment.tokens:
        raise SegmentsUnusable(f"has a segment {segment.file} whose token ids are damaged")
    try:
        loaded: Any = mx.load(str(path))
    except Exception:  # noqa: BLE001 - RuntimeError/ValueError for a damaged file
        raise SegmentsUnusable(f"has a segment {segment.file} that cannot be loaded") from None
    arrays: dict[str, Any] = dict(loaded)
    if {k.split(".", 1)[0] for k in arrays} != {str(i) for i in range(layers)} or any(
            a.ndim < 2 or a.shape[-2] != segment.tokens for a in arrays.values()):
        raise SegmentsUnusable(f"has a segment {segment.file} that does not fit the manifest")
    if segment_digest(tokens, arrays) != segment.digest:
        raise SegmentsUnusable(f"has a segment {segment.file} whose data does not match its "
                               "checksum")
    return arrays, tokens


@dataclass
class Chain:
    """A cache put together from the base and the segments that loaded."""

    cache: list[Any]
    tokens: list[int]
    segments: int = 0  # how many segments were used
    problem: str | None = None  # why the chain stops early (a segment failed), if it does
    lost_tokens: int = 0  # tokens the manifest names beyond the valid prefix
    extra: dict[str, Any] = field(default_factory=dict)


def load_chain(folder: SegmentFolder, manifest: Manifest | None, base: list[Any],
               base_tokens: list[int]) -> Chain:
    """The base's used tokens followed by every segment that loads and checks, in order
    (the first that does not ends the chain: its reason is ``problem``); without a manifest,
    the base alone. Concatenated per layer into buffers with room for the next turn (as a
    live cache has: mlx-lm grows K/V in steps of 256, copying the whole cache each time it
    runs out), and evaluated, so the next turn starts at once."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    used = manifest.base_tokens if manifest is not None else len(base_tokens)
    segments = manifest.segments if manifest is not None else ()
    pieces: list[dict[str, list[Any]]] = [
        {name: [a[..., :used, :]] for name, a in _parts(layer).items()} for layer in base]
    tokens = list(base_tokens[:used])
    problem = None
    count = 0
    for segment in segments:
        try:
            arrays, seg_tokens = load_segment(folder, segment, len(base))
        except SegmentsUnusable as why:
            problem = str(why)
            break
        try:
            for name, array in arrays.items():
                layer_no, part = name.split(".", 1)
                pieces[int(layer_no)][part].append(array)
        except (KeyError, ValueError):
            problem = f"has a segment {segment.file} that does not fit the model's layers"
            break
        tokens += seg_tokens
        count += 1
    n = len(tokens)
    room = (n // ROOM_STEP + 2) * ROOM_STEP - n  # 256 to 511 free entries, as mlx-lm's step
    cache: list[Any] = []
    for layer, parts in zip(base, pieces, strict=True):
        joined = {}
        for name, arrs in parts.items():
            arrs = arrs[: 1 + count]  # not what a failed segment may have added
            head = arrs[0]
            pad = mx.zeros((*head.shape[:-2], room, head.shape[-1]), dtype=head.dtype)
            joined[name] = mx.concatenate([*arrs, pad], axis=-2)
        if type(layer) is QuantizedKVCache:
            width = len(layer.keys)
            keys = tuple(joined[f"k.{j}"] for j in range(width))
            values = tuple(joined[f"v.{j}"] for j in range(width))
            cache.append(QuantizedKVCache.from_state((keys, values, n, layer.group_size,
                                                      layer.bits)))
        else:
            cache.append(KVCache.from_state((joined["k"], joined["v"], n)))
    mx.eval([list(joined_arrays(c)) for c in cache])
    return Chain(cache, tokens, count, problem, (manifest.total if manifest else n) - n)


def joined_arrays(layer: Any) -> list[Any]:
    return list(_parts(layer).values())


def plan(manifest: Manifest, saved: list[int], keep: list[int]) -> tuple[Manifest, int]:
    """The manifest that keeps what ``saved`` and ``keep`` share, and where the new segment
    must start (``len(keep)`` when none is needed)."""
    common = 0
    for x, y in zip(saved, keep, strict=False):
        if x != y:
            break
        common += 1
    if common < manifest.base_tokens:
        return replace(manifest, base_tokens=common, segments=()), common
    kept = tuple(s for s in manifest.segments if s.end <= common)
    start = kept[-1].end if kept else manifest.base_tokens
    return replace(manifest, segments=kept), start
