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
(``sessions.cache.resume``). If the base was rewritten (a full save) and the power went
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
named like segments or temp files are removed. No MLX at import time: the functions that
touch arrays run on the engine thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from models.safetensors_header import SafetensorsHeaderError, read_safetensors_header

from .cache_file import DIGEST_KIND, CacheUnusable
from .files import atomic_write, atomic_write_with, fsync_dir

SEGMENTS_SCHEMA = 1
MANIFEST = "manifest.json"
MARKER = ".workbench-cache"
MANIFEST_KIND = "workbench-prompt-cache-segments"
MAX_SEGMENTS = 256
SUFFIX = ".cache"
_SEGMENT_NAME = re.compile(r"^seg-\d{8,}-\d{8,}-[0-9a-f]{8}\.safetensors$")
_CUTTABLE = ("KVCache", "QuantizedKVCache")
ROOM_STEP = 256  # mlx-lm's K/V caches grow in steps of this many tokens


class SegmentsUnusable(CacheUnusable):
    """Why the segment folder (or one segment) cannot be used; completes "the saved prompt
    cache ..."."""


@dataclass(frozen=True)
class Segment:
    file: str
    start: int
    end: int
    digest: str
    bytes: int = 0

    @property
    def tokens(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` says: the base's checksum and used tokens, then the segments."""

    fingerprint: str
    adapter: str
    classes: tuple[str, ...]
    quant: tuple[tuple[int, int] | None, ...]  # (group_size, bits) per quantized layer
    base_digest: str
    base_tokens: int
    segments: tuple[Segment, ...] = ()

    @property
    def total(self) -> int:
        return self.segments[-1].end if self.segments else self.base_tokens

    def to_json(self) -> bytes:
        data = {
            "schema": SEGMENTS_SCHEMA, "kind": MANIFEST_KIND,
            "fingerprint": self.fingerprint, "adapter": self.adapter,
            "classes": list(self.classes),
            "quant": [list(q) if q else None for q in self.quant],
            "base": {"digest": self.base_digest, "tokens": self.base_tokens},
            "segments": [{"file": s.file, "start": s.start, "end": s.end, "digest": s.digest,
                          "bytes": s.bytes} for s in self.segments],
        }
        return json.dumps(data, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        def bad(what: str) -> SegmentsUnusable:
            return SegmentsUnusable(f"has a damaged segment manifest ({what})")

        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad("not JSON") from None
        if not isinstance(data, dict) or data.get("kind") != MANIFEST_KIND:
            raise bad("not a workbench manifest")
        if data.get("schema") != SEGMENTS_SCHEMA:
            raise SegmentsUnusable(f"has segments of schema {data.get('schema')!r}, not "
                                   f"{SEGMENTS_SCHEMA}")
        try:
            base = data["base"]
            segments = tuple(Segment(str(s["file"]), _whole(s["start"]), _whole(s["end"]),
                                     str(s["digest"]), _whole(s.get("bytes", 0)))
                             for s in data["segments"])
            quant = tuple(None if q is None else (_whole(q[0]), _whole(q[1]))
                          for q in data["quant"])
            manifest = cls(str(data["fingerprint"]), str(data["adapter"]),
                           tuple(str(c) for c in data["classes"]), quant,
                           str(base["digest"]), _whole(base["tokens"]), segments)
        except (KeyError, TypeError, ValueError, IndexError):
            raise bad("a field is missing or of the wrong kind") from None
        at = manifest.base_tokens
        for s in segments:
            if s.start != at or s.end <= s.start or not _SEGMENT_NAME.match(s.file):
                raise bad(f"segment {s.file!r} does not follow on at token {at}")
            at = s.end
        if len(quant) != len(manifest.classes):
            raise bad("one quantization entry per layer is expected")
        return manifest


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(value)
    return value


# -- the folder ----------------------------------------------------------------------------
class SegmentFolder:
    """``NAME.cache/`` beside the transcript. Every method that writes or deletes checks
    first that the folder is the workbench's (``check``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def check(self, create: bool = False) -> None:
        """Raise ``SegmentsUnusable`` unless the folder is one the workbench made: a real
        folder (no link), this user's, with the marker file. With ``create``, make it
        (private, marked) if nothing is there."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not create:
                raise SegmentsUnusable("has no segment folder") from None
            self.path.mkdir(mode=0o700)
            os.chmod(self.path, 0o700)
            atomic_write(self.path / MARKER, b"prompt-cache segments of a workbench session\n")
            fsync_dir(self.path.parent)
            return
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise SegmentsUnusable(f"has {self.path.name} in the way, not a folder the "
                                   "workbench made (it was left as it is)")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise SegmentsUnusable(f"has {self.path.name} owned by another user (it was left "
                                   "as it is)")
        marker = self.path / MARKER
        try:
            mst = os.lstat(marker)
        except FileNotFoundError:
            raise SegmentsUnusable(f"has a folder {self.path.name} the workbench did not make "
                                   "(it was left as it is)") from None
        if not stat.S_ISREG(mst.st_mode):
            raise SegmentsUnusable(f"has a folder {self.path.name} with an odd marker (it was "
                                   "left as it is)")
        if stat.S_IMODE(st.st_mode) & 0o077:
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o700)

    def read_manifest(self) -> Manifest | None:
        """The manifest, or None when there is none; ``SegmentsUnusable`` if damaged."""
        self.check()
        try:
            raw = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SegmentsUnusable(f"has a segment manifest that cannot be read "
                                   f"({exc.strerror})") from None
        return Manifest.from_json(raw)

    def write_manifest(self, manifest: Manifest) -> None:
        self.check()
        atomic_write(self.manifest_path, manifest.to_json())

    def cleanup(self, manifest: Manifest | None) -> int:
        """Delete the segments ``manifest`` does not name and the temp files of killed
        writers: regular files of ours with our names only. Returns how many went."""
        self.check()
        keep = {s.file for s in manifest.segments} if manifest else set()
        gone = 0
        for entry in os.scandir(self.path):
            name = entry.name
            ours = (_SEGMENT_NAME.match(name) and name not in keep) or (
                name.startswith((".seg-", f".{MANIFEST}.", f".{MARKER}.")) and "tmp" in name)
            if not ours:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid")
                                                and st.st_uid != os.getuid()):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                gone += 1
        return gone

    def size_bytes(self) -> int:
        total = 0
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.path):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    def segment_tokens(self, segment: Segment) -> list[int]:
        """The token ids a segment's header names (no tensor is read)."""
        try:
            header = read_safetensors_header(self.path / segment.file)
        except SafetensorsHeaderError as exc:
            raise SegmentsUnusable(f"has a segment {segment.file} that {exc.reason}") from None
        tokens = _tokens(header.metadata.get("tokens", ""))
        if tokens is None or len(tokens) != segment.tokens:
            raise SegmentsUnusable(f"has a segment {segment.file} whose token ids are "
                                   "damaged")
        return tokens


def _tokens(text: str) -> list[int] | None:
    try:
        tokens = json.loads(text)
    except ValueError:
        return None
    if isinstance(tokens, list) and all(type(t) is int and t >= 0 for t in tokens):
        return tokens
    return None


# -- what was saved, without reading tensors -----------------------------------------------
_memo: dict[str, tuple[bytes, list[int]]] = {}
_memo_lock = threading.Lock()


def saved_tokens(folder: SegmentFolder, manifest: Manifest, base_tokens: list[int]) -> list[int]:
    """The token ids the chain holds: the base's used ones, then each segment's (remembered
    between saves of this process; read from the segments' headers otherwise)."""
    key = str(folder.path)
    raw = manifest.to_json()
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None and hit[0] == raw:
        return list(hit[1])
    tokens = list(base_tokens[: manifest.base_tokens])
    for segment in manifest.segments:
        tokens += folder.segment_tokens(segment)
    remember(folder, manifest, tokens)
    return tokens


def remember(folder: SegmentFolder, manifest: Manifest | None, tokens: list[int]) -> None:
    with _memo_lock:
        if manifest is None:
            _memo.pop(str(folder.path), None)
        else:
            _memo[str(folder.path)] = (manifest.to_json(), list(tokens))


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
