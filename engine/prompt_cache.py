"""The conversation's prompt caches: keys and values the model computed, and for which tokens.

One ``CacheSlot`` per cache key (the active adapter and scale; ``None`` for the base model),
because K/V computed under one adapter are wrong under another. ``PromptCaches`` keeps a
bounded number of slots, least recently used out, and finds how much of a new prompt a slot
can reuse (``reuse_prefix``: the longest common prefix, the rest trimmed off).

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


@dataclass
class CacheSlot:
    """A prompt cache and the token ids whose keys and values it holds, in order."""

    cache: list[Any]
    tokens: list[int] = field(default_factory=list)

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


@dataclass(frozen=True)
class CacheSnapshot:
    """What one slot holds, for a save: the layer caches (the live objects: use them on the
    engine thread, before the next turn changes them) and the tokens they hold."""

    key: CacheKey
    cache: list[Any]
    tokens: tuple[int, ...]


class PromptCaches:
    """The slots, one per cache key, at most ``max_slots`` of them (least recently used out)."""

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max_slots
        self.model: Any = None  # the model the caches are made for (set by the core)
        self._slots: dict[CacheKey, CacheSlot] = {}
        self._order: dict[CacheKey, None] = {}  # least recently used first

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
        """Forget ``key``'s cache (its state is unknown, e.g. after a failure mid-turn)."""
        self._slots.pop(key, None)
        self._order.pop(key, None)

    def clear(self) -> None:
        self._slots.clear()
        self._order.clear()

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
        slot = self._slots.get(key)
        return slot.nbytes if slot else 0

    # -- reuse ---------------------------------------------------------------------------
    def reuse_prefix(self, key: CacheKey, prompt: list[int]) -> int:
        """Trim ``key``'s cache to its longest prefix shared with ``prompt``; return its length.

        At least one prompt token is always left to evaluate (the model needs an input). A
        cache that cannot be trimmed (a full rotating window) is dropped instead.
        """
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        slot = self.slot(key)
        common = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)
        extra = len(slot.tokens) - common
        if extra > 0:
            if can_trim_prompt_cache(slot.cache):
                trim_prompt_cache(slot.cache, extra)
                del slot.tokens[common:]
            else:
                self.drop(key)
                return 0
        return common

    # -- the public copy: sessions save and restore through these ------------------------
    def snapshot(self, key: CacheKey) -> CacheSnapshot | None:
        """What ``key``'s slot holds now (None when nothing is cached), its tokens checked
        against the cache's own offset."""
        slot = self._slots.get(key)
        if slot is None or not slot.tokens or not slot.cache:
            return None
        if slot.offset() != len(slot.tokens):
            slot.reconcile()
        if not slot.tokens:
            return None
        return CacheSnapshot(key, slot.cache, tuple(slot.tokens))

    def restore(self, key: CacheKey, cache: list[Any], tokens: list[int]) -> None:
        """Make ``cache`` (holding exactly ``tokens``) the slot of ``key``."""
        self._slots[key] = CacheSlot(cache, list(tokens))
        self.touch(key)
        self.bound(key)
