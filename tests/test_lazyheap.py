"""LazyHeap: ordering, O(1) withdrawal, and memory bounded by live entries."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from trio_periodic.scheduler.lazyheap import LazyHeap


@given(st.lists(st.tuples(st.floats(0, 1e6), st.booleans()), max_size=300))
def test_peek_is_the_earliest_live_entry(items: list[tuple[float, bool]]) -> None:
    heap: LazyHeap[int] = LazyHeap()
    live: dict[int, float] = {}
    for i, (deadline, keep) in enumerate(items):
        entry = heap.push(deadline, i)
        if keep:
            live[i] = deadline
        else:
            heap.withdraw(entry)
    assert len(heap) == len(live)
    top = heap.peek()
    if not live:
        assert top is None
    else:
        assert top is not None and top[0] == min(live.values())


def test_withdrawn_entries_do_not_pile_up() -> None:
    heap: LazyHeap[int] = LazyHeap()
    keep = [heap.push(1e9, -1) for _ in range(10)]
    for i in range(100_000):
        entry = heap.push(random.random(), i)
        heap.withdraw(entry)
        heap.withdraw(entry)  # twice is harmless
    assert len(heap) == 10
    assert len(heap._heap) < 4096  # swept, not 200,000 dead entries
    heap.withdraw(keep[0])
    heap.withdraw(keep[0])
    assert len(heap) == 9
