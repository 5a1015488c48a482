"""A shared (cluster-mode) store for scheduler-service tests: nothing stored,
every claim recorded, one simulated round trip per claim.

Subclasses decide each claim's answer in ``answer`` (the refused handles with
their lease end, None for "no such row"), or raise StoreError from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from trio_periodic.store.base import Change, RemoteChange, StoredState

Claims = Sequence[tuple[bytes, bytes, float]]
Refused = dict[tuple[bytes, bytes], float | None]


class FakeSharedStore:
    uri = "fake:"
    durable = True
    shared = True

    def __init__(self) -> None:
        #: The job names of each claim, sorted, in order.
        self.claims: list[list[bytes]] = []
        #: The jobs the service asked to read again, in order.
        self.rereads: list[tuple[bytes, bytes]] = []

    async def open(self) -> StoredState:
        return StoredState()

    async def commit(self, changes: Sequence[Change]) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def claim(self, claims: Claims) -> Refused:
        self.claims.append(sorted(name for _, name, _ in claims))
        await trio.sleep(0.01)  # a round trip (other things may happen meanwhile)
        return self.answer(claims)

    def answer(self, claims: Claims) -> Refused:
        return {}

    async def watch(
        self,
        on_changes: Callable[[list[RemoteChange]], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    def reread(self, handles: Sequence[tuple[bytes, bytes]]) -> None:
        self.rereads += handles
