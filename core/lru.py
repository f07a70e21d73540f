"""A bounded least-recently-used map, for per-process caches fed by what programs name.

Programs, stored rows and pool requests choose how many distinct corpora and programs a long-running
process sees, so every such cache forgets its least recently used entries past a count (and,
optionally, a total weight such as bytes). Thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["LRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``max_items`` entries and ``max_weight`` total ``weight(value)`` (the newest entry is
    always kept, however heavy)."""

    def __init__(self, max_items: int, *, max_weight: int | None = None, weight: Callable[[V], int] | None = None):
        self.max_items = max(1, max_items)
        self.max_weight = max_weight
        self._weight = weight
        self._total = 0
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            found = self._data.get(key)
            if found is None:
                return None
            self._data.move_to_end(key)
            return found[0]

    def put(self, key: K, value: V) -> V:
        size = self._weight(value) if self._weight is not None else 0
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._total -= old[1]
            self._data[key] = (value, size)
            self._total += size
            while len(self._data) > 1 and (len(self._data) > self.max_items or (
                    self.max_weight is not None and self._total > self.max_weight)):
                _, (_, gone) = self._data.popitem(last=False)
                self._total -= gone
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._total = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data
