"""The conversation's prompt caches: keys and values the model computed, and for which tokens.

One ``CacheSlot`` per cache key (the active adapter and scale; ``None`` for the base model),
because K/V computed under one adapter are wrong under another. ``PromptCaches`` keeps a
bounded number of slots, least recently used out, and finds how much of a new prompt a slot
can reuse (``reuse_prefix``: the longest common prefix, the rest trimmed off).

Some layer caches cannot be trimmed: a sliding-window layer's ``RotatingKVCache`` once its
window is full, a recurrent layer's state always. For those the slot keeps a *checkpoint*:
a copy of those layers taken when a prompt had been read, before the reply was written. The
next prompt nearly always begins with the previous one, so a mismatch after that point
(the template renders the last reply differently, a reply was edited or regenerated) goes
back to the checkpoint and reads only the rest, instead of the whole conversation.

``snapshot`` / ``restore`` are the public way for other packages (the session store) to take
a copy of what is cached and to put a cache back: nobody else touches the slots. All of it
runs on the engine thread (the arrays are MLX arrays).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

CacheKey = Hashable | None


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def always_trimmable(layer: Any) -> bool:
    """Plain and quantized K/V caches can be cut to any prefix; other kinds cannot always."""
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    return type(layer) in (KVCache, QuantizedKVCache)


def _copied(value: Any) -> Any:
    """``value`` with every MLX array in it replaced by a new array object, and every list,
    tuple, dict and layer cache in it rebuilt: nothing the live cache changes in place (a
    slice written into an array, an entry set in a list) is shared with the copy."""
    import mlx.core as mx
    from mlx_lm.models.cache import _BaseCache

    if isinstance(value, mx.array):
        return mx.array(value)
    if isinstance(value, _BaseCache):
        return copy_layer(value)
    if isinstance(value, list):
        return [_copied(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copied(v) for v in value)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


def copy_layer(layer: Any) -> Any:
    """An independent copy of a layer cache: its arrays are updated in place as it grows,
    and a recurrent layer's ``ArraysCache`` (LFM2's convolutions, Mamba's states) keeps its
    arrays in a list that is written into (``cache[i] = ...``): copying ``layer.state``
    would share that list, and a checkpoint would move on with the conversation."""
    kind: Any = type(layer)
    new = kind.__new__(kind)
    new.__dict__.update({name: _copied(value) for name, value in layer.__dict__.items()})
    return new


def cut_layer(layer: Any, tokens: int) -> Any:
    """A copy of a plain or quantized K/V cache holding exactly its first ``tokens`` entries
    (not the whole preallocated buffer, which grows in steps of 256)."""
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    if layer.keys is None:
        return copy_layer(layer)
    if type(layer) is KVCache:
        return KVCache.from_state((layer.keys[..., :tokens, :],
                                   layer.values[..., :tokens, :], tokens))
    keys = tuple(a[..., :tokens, :] for a in layer.keys)
    values = tuple(a[..., :tokens, :] for a in layer.values)
    assert type(layer) is QuantizedKVCache
    return QuantizedKVCache.from_state((keys, values, tokens, layer.group_size, layer.bits))


@dataclass(frozen=True)
class Checkpoint:
    """Copies of the layers that cannot be trimmed, as they were after ``tokens`` tokens
    (None for the layers that can)."""

    tokens: int
    layers: tuple[Any, ...]


@dataclass
class CacheSlot:
    """A prompt cache and the token ids whose keys and values it holds, in order."""

    cache: list[Any]
    tokens: list[int] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    # Speculative decoding (engine/speculative.py): the draft model's cache for the same
    # conversation, and which draft made it (its identity). Dropped with the slot.
    draft: CacheSlot | None = None
    draft_of: str = ""

    @property
    def nbytes(self) -> int:
        total = 0
        for c in self.cache:
            try:
                total += int(c.nbytes)
            except Exception:  # noqa: BLE001 - an empty cache has no arrays yet
                pass
        return total

    def offset(self) -> int:
        return int(getattr(self.cache[0], "offset", len(self.tokens))) if self.cache else 0

    def reconcile(self) -> None:
        """Make ``tokens`` agree with what the cache really holds."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        held = self.offset()
        if held < len(self.tokens):
            del self.tokens[held:]
        elif held > len(self.tokens):
            if can_trim_prompt_cache(self.cache):
                trim_prompt_cache(self.cache, held - len(self.tokens))
            else:  # cannot tell what the extra entries are: start over
                self.cache[:] = []
                self.tokens.clear()
        if self.checkpoint is not None and self.checkpoint.tokens > len(self.tokens):
            self.checkpoint = None

    def mark(self) -> None:
        """Take a checkpoint now, if some layer could not be trimmed back to here later."""
        if all(always_trimmable(c) for c in self.cache):
            return
        self.checkpoint = Checkpoint(len(self.tokens), tuple(
            None if always_trimmable(c) else copy_layer(c) for c in self.cache))

    def back_to_checkpoint(self, limit: int) -> bool:
        """Return to the checkpoint if it holds no more than ``limit`` tokens; False if
        there is none to go back to."""
        point = self.checkpoint
        if point is None or point.tokens > limit or point.tokens > len(self.tokens):
            return False
        for i, saved in enumerate(point.layers):
            layer = self.cache[i]
            if saved is not None:
                self.cache[i] = copy_layer(saved)  # the checkpoint stays for another time
            elif layer.offset > point.tokens:
                layer.trim(layer.offset - point.tokens)
        del self.tokens[point.tokens:]
        return True

    def prefix(self, limit: int) -> tuple[list[Any], int]:
        """The layer caches holding the longest prefix of at most ``limit`` tokens that can
        be had (any prefix when every layer can be cut; else the checkpoint's, or all that
        is held), and that prefix's length. They share arrays with the live cache: use them
        at once, on the engine thread (a save does), before the next turn changes them."""
        if all(always_trimmable(c) for c in self.cache):
            return [cut_layer(c, limit) for c in self.cache], limit
        point = self.checkpoint
        if limit >= len(self.tokens) or point is None or point.tokens > limit:
            return list(self.cache), len(self.tokens)
        return [saved if saved is not None else cut_layer(layer, point.tokens)
                for layer, saved in zip(self.cache, point.layers, strict=True)], point.tokens


@dataclass(frozen=True)
class CacheSnapshot:
    """What one slot holds, for a save: layer caches (sharing the live arrays: write them
    at once, on the engine thread) and the tokens they hold."""

    key: CacheKey
    cache: list[Any]
    tokens: tuple[int, ...]


class PromptCaches:
    """The slots, one per cache key, at most ``max_slots`` of them (least recently used out)."""

    # A turn that would cut more than this many cached tokens keeps them on the shelf.
    SHELVE_OVER = 8

    def __init__(self, max_slots: int, shelf_bytes: int = 0) -> None:
        self.max_slots = max_slots
        self.model: Any = None  # the model the caches are made for (set by the core)
        self._slots: dict[CacheKey, CacheSlot] = {}
        self._order: dict[CacheKey, None] = {}  # least recently used first
        # Branches: caches of other branches of the conversation (a reply regenerated, a
        # message edited, another branch shown), kept whole so that going back to them
        # reuses their own turns too; at most ``shelf_bytes`` in all, least recently used
        # out. Only caches every layer of which can be cut are shelved.
        self.shelf_bytes = shelf_bytes
        self._shelf: list[tuple[CacheKey, CacheSlot]] = []  # least recently used first
        self.last_reuse = ""  # what the last reuse_prefix took from the shelf, in words

    # -- slots ---------------------------------------------------------------------------
    def slot(self, key: CacheKey) -> CacheSlot:
        """The slot of ``key``, made empty if there is none (or its cache was dropped)."""
        from mlx_lm.models.cache import make_prompt_cache

        slot = self._slots.get(key)
        if slot is None or not slot.cache:
            slot = CacheSlot(make_prompt_cache(self.model))
            self._slots[key] = slot
        self.touch(key)
        return slot

    def get(self, key: CacheKey) -> CacheSlot | None:
        return self._slots.get(key)

    def drop(self, key: CacheKey) -> None:
        """Forget ``key``'s cache (its state is unknown, e.g. after a failure mid-turn) and
        the branch caches kept for it."""
        self._slots.pop(key, None)
        self._order.pop(key, None)
        self._shelf = [(k, s) for k, s in self._shelf if k != key]

    def clear(self) -> None:
        self._slots.clear()
        self._order.clear()
        self._shelf.clear()

    def shelved(self, key: CacheKey) -> list[list[int]]:
        """The token lists of the caches kept on the shelf for ``key`` (oldest first)."""
        return [list(slot.tokens) for k, slot in self._shelf if k == key]

    def _shelve(self, key: CacheKey, slot: CacheSlot) -> bool:
        """Keep ``slot`` (whole) on the shelf if it fits the budget, evicting the oldest."""
        size = slot.nbytes
        if size > self.shelf_bytes or not slot.tokens:
            return False
        self._shelf.append((key, slot))
        while sum(s.nbytes for _k, s in self._shelf) > self.shelf_bytes:
            self._shelf.pop(0)
        return True

    def _from_shelf(self, key: CacheKey, prompt: list[int], than: int) -> CacheSlot | None:
        """Take off the shelf the cache of ``key`` sharing the longest prefix with
        ``prompt``, if longer than ``than``."""
        best, best_len = None, than
        for i, (k, slot) in enumerate(self._shelf):
            if k == key:
                n = common_prefix(slot.tokens, prompt)
                if n > best_len:
                    best, best_len = i, n
        return None if best is None else self._shelf.pop(best)[1]

    def touch(self, key: CacheKey) -> None:
        self._order.pop(key, None)
        self._order[key] = None

    def cached_keys(self) -> list[CacheKey]:
        return list(self._slots)

    def bound(self, keep: CacheKey) -> None:
        """Drop the least recently used slots beyond ``max_slots`` (never ``keep``'s)."""
        while len(self._slots) > self.max_slots:
            oldest = next((k for k in self._order if k != keep and k in self._slots), None)
            if oldest is None:
                break
            self.drop(oldest)

    def tokens(self, key: CacheKey) -> list[int]:
        slot = self._slots.get(key)
        return list(slot.tokens) if slot else []

    def nbytes(self, key: CacheKey) -> int:
        """Bytes of ``key``'s cache and of the branch caches kept for it."""
        slot = self._slots.get(key)
        return (slot.nbytes if slot else 0) + sum(s.nbytes for k, s in self._shelf if k == key)

    # -- reuse ---------------------------------------------------------------------------
    def reuse_prefix(self, key: CacheKey, prompt: list[int]) -> int:
        """Trim ``key``'s cache to its longest prefix shared with ``prompt``; return its length.

        At least one prompt token is always left to evaluate (the model needs an input). A
        cache that cannot be trimmed (a full rotating window) is dropped instead.
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        slot = self.slot(key)
        self.last_reuse = ""
        if self.shelf_bytes:
            slot = self._shelf_swap(key, slot, prompt)
        common = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)
        extra = len(slot.tokens) - common
        if extra > 0:
            if can_trim_prompt_cache(slot.cache):
                trim_prompt_cache(slot.cache, extra)
                del slot.tokens[common:]
            elif slot.back_to_checkpoint(common):
                return len(slot.tokens)
            else:
                self.drop(key)
                return 0
        return common

    def _shelf_swap(self, key: CacheKey, slot: CacheSlot, prompt: list[int]) -> CacheSlot:
        """Before a turn: if a shelved cache of another branch shares more with ``prompt``,
        it becomes the live one (the live one is shelved); if the live cache would lose
        more than a seam's worth of another branch's tokens, they are shelved first and the
        turn goes on in a copy of the shared part."""
        common = common_prefix(slot.tokens, prompt)
        shelved = self._from_shelf(key, prompt, common)
        if shelved is not None:
            if slot.tokens:
                self._shelve(key, slot)
            self._slots[key] = shelved
            reused = min(common_prefix(shelved.tokens, prompt), len(prompt) - 1)
            self.last_reuse = (f"{reused} tokens from the cache kept for this branch "
                               f"({reused - min(common, len(prompt) - 1)} more than the "
                               "other branch's)")
            return shelved
        keep = min(common, len(prompt) - 1)
        if len(slot.tokens) - keep > self.SHELVE_OVER and keep > 0 \
                and all(always_trimmable(c) for c in slot.cache) \
                and slot.offset() == len(slot.tokens) \
                and self._shelve(key, slot):
            copy = CacheSlot([cut_layer(c, keep) for c in slot.cache], slot.tokens[:keep])
            self._slots[key] = copy
            self.last_reuse = (f"the other branch's {len(slot.tokens) - keep} tokens past "
                               "the shared part are kept for it")
            return copy
        return slot

    # -- the public copy: sessions save and restore through these ------------------------
    def snapshot(self, key: CacheKey, valid: list[int] | None = None) -> CacheSnapshot | None:
        """A copy of ``key``'s cache (None when nothing is cached). With ``valid``, only the
        longest part of it that agrees with those tokens and can be had on its own (see
        ``CacheSlot.prefix``); None when nothing agrees."""
        slot = self._slots.get(key)
        if slot is None or not slot.tokens or not slot.cache:
            return None
        if slot.offset() != len(slot.tokens):
            slot.reconcile()
        limit = len(slot.tokens) if valid is None else common_prefix(slot.tokens, valid)
        if limit == 0:
            return None
        cache, held = slot.prefix(limit)
        return CacheSnapshot(key, cache, tuple(slot.tokens[:held]))

    def restore(self, key: CacheKey, cache: list[Any], tokens: list[int]) -> None:
        """Make ``cache`` (holding exactly ``tokens``) the slot of ``key``."""
        slot = CacheSlot(cache, list(tokens))
        slot.mark()  # the next prompt begins with these tokens
        self._slots[key] = slot
        self.touch(key)
        self.bound(key)
