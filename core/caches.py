"""A least-recently-used cache bounded by the bytes its values hold, not by how many there are.

A count says nothing about memory when one entry may be a 1 KB thumbnail and the next a 100 MB photo;
a byte budget does. Each value's size is given when it is stored (the caller knows what its values are:
decoded pixels, tensors), and the oldest values are dropped until the total fits again. A value larger
than the whole budget is not stored at all. This module imports nothing heavy.

Example:
    >>> cache = ByteBudgetLRU(max_bytes=10)
    >>> cache.put("a", "first", 6); cache.put("b", "second", 6)
    >>> ("a" in cache, "b" in cache, cache.nbytes)
    (False, True, 6)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

Value = TypeVar("Value")


class ByteBudgetLRU(Generic[Value]):
    """A thread-safe LRU whose values together hold at most ``max_bytes``.

    Args:
        max_bytes: The budget; 0 stores nothing (a cache that is off).

    Raises:
        ValueError: ``max_bytes`` is negative.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"a cache budget must be 0 bytes or more, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Value, int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """The bytes the stored values hold, as given to :meth:`put`; never more than ``max_bytes``."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def get(self, key: str) -> Value | None:
        """The value stored under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, value: Value, nbytes: int) -> None:
        """Stores ``value`` as the most recently used, dropping the oldest values until the budget holds.

        A value of more than ``max_bytes`` is not stored (and nothing is dropped for it).
        """
        if nbytes < 0:
            raise ValueError(f"a cached value cannot hold {nbytes} bytes")
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old[1]
            if nbytes > self.max_bytes:
                return
            while self._entries and self._nbytes + nbytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._nbytes -= dropped
            self._entries[key] = (value, nbytes)
            self._nbytes += nbytes

    def clear(self) -> None:
        """Forgets every value."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
