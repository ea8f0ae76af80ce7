"""Exact repeats: the final block's KV and its last logits, kept per request layout, so a repeated prompt skips
the final block's forward pass.

A retry, a second user asking the same question over the same passages, or a chat client resending a turn is
the same block-mode request again: the same blocks (cache keys: document, tokens, model fingerprint) at the same
offsets, the same final-block tokens, the same recovery options. Its first token and its cache after the final
block are then a function of that key alone, so the engine keeps, per key, a copy of the final block's KV
(``[L, 1, H_kv, F, D]``) and the last row of logits (``[1, V]``). A repeat assembles the blocks as usual (they come
from the KV store) and appends the kept KV through the cache's own update: its logits and its cache are bitwise
those of the first request, and it decodes exactly as the first did (the same greedy tokens; the same samples for
the same seed). What a prefix cache (vLLM, llama.cpp, transformers) gives an exact repeat, here without keeping
the whole request's KV: an entry costs the final block's tokens only.

Bounded by bytes, least recently used first out; ``max_bytes=0`` keeps nothing. Thread-safe. Entries live in the
process's memory only (nothing is written anywhere).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FinalBlock:
    """What the final block of one layout produced: its KV and the logits of its last token."""

    keys: torch.Tensor  # [L, 1, H_kv, F, D]
    values: torch.Tensor  # [L, 1, H_kv, F, D]
    logits: torch.Tensor  # [1, V]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.logits))


class RepeatCache:
    """Least-recently-used map from a request's layout key to its :class:`FinalBlock`, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        assert max_bytes >= 0, max_bytes
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, FinalBlock] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> FinalBlock | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: Hashable, entry: FinalBlock) -> bool:
        """Keep ``entry`` under ``key`` (evicting the least recently used); False when it alone exceeds the
        budget."""
        size = entry.nbytes
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._entries and self._bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[key] = entry
            self._bytes += size
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
