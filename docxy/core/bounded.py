"""A mapping with a cap: the least recently used entry goes when a new one would exceed it.

Per-repository state (the mirror's tokens, repositories it may not read) is keyed by names
clients choose, so it must not grow with them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

#: Repositories remembered per kind of state: about 1.6 KB each, so a few MB at most.
MAX_REPOSITORIES = 4096


class LruDict(Generic[K, V]):
    """``get`` and ``set`` mark an entry as just used; at most ``capacity`` entries are kept."""

    def __init__(self, capacity: int = MAX_REPOSITORIES) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def set(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
