"""Per-second event counts over the last minutes, kept in a ring (no I/O, no clock).

Theory of operation
-------------------
The scheduler core keeps running totals (``Scheduler.counters``: submitted,
done, failed, ...).  A ``Throughput`` turns them into a rate history: once a
second the service calls :meth:`Throughput.sample` with the time and the
totals, and the differences since the previous sample are counted for the
second that just ended.  Events can also be counted directly with
:meth:`Throughput.add` after :meth:`Throughput.tick`.

The ring has one slot per second for ``span`` seconds; each slot remembers
which second (whole seconds since the Unix epoch) it holds, so a slot left
over from an earlier lap reads as zero and a gap in the samples (a busy or
suspended process) costs nothing to skip.  Memory is ``span`` integers per
kind, whatever the load.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Seconds of history kept by default (ten minutes).
DEFAULT_SPAN = 600


@dataclass(frozen=True, slots=True)
class Series:
    """Counts per second for ``len(counts[kind])`` seconds starting at ``start``."""

    #: The first second of the series (whole seconds since the Unix epoch).
    start: int
    counts: dict[str, list[int]]

    def as_json(self) -> dict[str, object]:
        return {"start": self.start, "step": 1, "counts": self.counts}


class Throughput:
    def __init__(self, kinds: Iterable[str], span: int = DEFAULT_SPAN) -> None:
        if span < 1:
            raise ValueError("span must be at least one second")
        self.kinds = tuple(kinds)
        self.span = span
        self._counts = {kind: [0] * span for kind in self.kinds}
        #: The second each slot holds (-1: never used).
        self._stamps = [-1] * span
        #: The current second (whole epoch seconds), once ticked.
        self._second: int | None = None
        #: The totals at the last sample: the counters start at zero with the core.
        self._last = dict.fromkeys(self.kinds, 0)

    # ------------------------------------------------------------ writing

    def tick(self, now: float) -> None:
        """Make ``now`` (epoch seconds) the current second; time never goes back."""
        second = math.floor(now)
        if self._second is not None and second <= self._second:
            return
        self._second = second
        self._slot(second)

    def add(self, kind: str, n: int = 1) -> None:
        """Count ``n`` events of ``kind`` in the current second."""
        if self._second is None:
            raise RuntimeError("tick(now) before add()")
        self._counts[kind][self._slot(self._second)] += n

    def sample(self, now: float, totals: Mapping[str, int]) -> None:
        """Count what ``totals`` grew by since the last sample, in the second
        before ``now`` (call it just after each whole second)."""
        last, self._last = self._last, {kind: totals.get(kind, 0) for kind in self.kinds}
        second = math.floor(now) - 1
        if self._second is None or second > self._second:
            self._second = second
        slot = self._slot(self._second)
        for kind in self.kinds:
            grown = self._last[kind] - last[kind]
            if grown > 0:
                self._counts[kind][slot] += grown

    def _slot(self, second: int) -> int:
        """The slot of ``second``, cleared if it still held an older one."""
        slot = second % self.span
        if self._stamps[slot] != second:
            self._stamps[slot] = second
            for counts in self._counts.values():
                counts[slot] = 0
        return slot

    # ------------------------------------------------------------ reading

    def series(self, seconds: int, kinds: Iterable[str] | None = None) -> Series:
        """The last ``seconds`` seconds (at most ``span``) up to the current one."""
        seconds = max(1, min(seconds, self.span))
        end = self._second if self._second is not None else 0
        start = end - seconds + 1
        wanted = self.kinds if kinds is None else tuple(k for k in kinds if k in self._counts)
        out: dict[str, list[int]] = {kind: [] for kind in wanted}
        for second in range(start, end + 1):
            slot = second % self.span
            fresh = self._stamps[slot] == second
            for kind in wanted:
                out[kind].append(self._counts[kind][slot] if fresh else 0)
        return Series(start, out)

    def total(self, kind: str, seconds: int) -> int:
        """Events of ``kind`` in the last ``seconds`` seconds."""
        return sum(self.series(seconds, [kind]).counts.get(kind, []))
