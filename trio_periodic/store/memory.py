"""The in-memory store: nothing survives the process (for tests and throwaway use)."""

from __future__ import annotations

from collections.abc import Sequence

from trio_periodic.store.base import Change, StoredState


class MemoryStore:
    uri = ":memory:"
    durable = False
    shared = False

    async def open(self) -> StoredState:
        return StoredState()

    async def commit(self, changes: Sequence[Change]) -> None:
        # The scheduler's RAM is the whole job set; there is nothing to write.
        return None

    async def aclose(self) -> None:
        return None
