"""A min-heap of deadlines whose entries can be withdrawn in O(1).

Job timeouts are set on every assignment, moved on every confirmation and
withdrawn on every report: three operations per job on the hot path, of
which almost none ever fires.  ``heapq`` does the ordering in C; withdrawing
only marks the entry dead, and dead entries are skipped when they reach the
top or swept out when they outnumber the live ones (so memory stays
proportional to the live deadlines).
"""

from __future__ import annotations

import heapq
from typing import Generic, TypeVar

T = TypeVar("T")

#: An entry: [deadline, seq, item]; item None once withdrawn.
Entry = list


class LazyHeap(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[list[object]] = []
        self._seq = 0
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, deadline: float, item: T) -> list[object]:
        self._seq += 1
        entry: list[object] = [deadline, self._seq, item]
        heapq.heappush(self._heap, entry)
        self._live += 1
        return entry

    def withdraw(self, entry: list[object]) -> None:
        if entry[2] is None:
            return
        entry[2] = None
        self._live -= 1
        if len(self._heap) > 1024 and len(self._heap) > 3 * self._live:
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)

    def peek(self) -> tuple[float, T] | None:
        """The earliest live (deadline, item), or None."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        if not heap:
            return None
        top = heap[0]
        return top[0], top[2]  # type: ignore[return-value]
