"""Cron expressions in a time zone: when the ticks are (pure: no clock).

Theory of operation
-------------------
A schedule is a five-field cron expression (minute hour day-of-month month
day-of-week, Debian cron syntax as parsed by ``cronsim``, BSD licence) read
as *wall-clock time in an IANA zone* (``zoneinfo``; the ``tzdata`` package
supplies the zones where the system has none).  The zone defaults to UTC.

Every function here takes the instants it works on as arguments (seconds
since the Unix epoch) and returns instants; nothing reads a clock.

The DST rule: *each local date-time the expression matches gives exactly one
tick*.

* A local time that does not exist (the hour skipped when clocks spring
  forward, e.g. 02:30 in Europe/Paris on the last Sunday of March) ticks at
  the first instant after the gap: the moment of the change itself (03:00
  CEST in that example).  Several matches inside one gap, and a match at the
  first minute after it, fall on that same instant and make one tick.
* A local time that happens twice (the hour repeated when clocks fall back)
  ticks only at its first occurrence, for hourly and daily expressions
  alike: an hourly expression does not fire again during the repeated hour.

Why a wrapper: ``cronsim`` mimics Debian cron, whose DST special case only
covers expressions with a fixed minute and hour; ``0 * * * *`` is stepped in
real time there and fires twice in the repeated hour.  So the expression is
evaluated here on *naive* local date-times (``cronsim`` then does plain
calendar arithmetic) and each match is mapped to an instant by
``to_instant`` with the rule above; the iteration keeps only instants later
than the one before, which is what makes the rule "exactly once".
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

#: The zone of a schedule that names none.
DEFAULT_ZONE = "UTC"
#: Local date-times examined before giving up on finding the next tick (an
#: expression that matches (almost) never, e.g. 29 February on a Monday, is
#: still found: cronsim searches up to 50 years inside one step).
_MAX_STEPS = 10_000
#: Local time past ``instant`` where ``backwards`` starts (more than any DST shift).
_LOOK_BACK_FROM = timedelta(hours=3)


class CronError(ValueError):
    """A cron expression or a zone name that cannot be used (one line)."""


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; CronError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise CronError(f"unknown time zone {name!r}") from exc


class Cron:
    """A validated cron expression in a zone."""

    __slots__ = ("expr", "tz", "zone")

    def __init__(self, expr: str, tz: str = DEFAULT_ZONE) -> None:
        expr = " ".join(expr.split())
        if len(expr.split(" ")) != 5:
            raise CronError(
                f"cron expression {expr!r} must have 5 fields (minute hour day month weekday)"
            )
        self.expr = expr
        self.tz = tz
        self.zone = zone(tz)
        try:
            first = next(CronSim(expr, datetime(2000, 1, 1)))
        except CronSimError as exc:
            raise CronError(f"bad cron expression {expr!r}: {exc}") from exc
        except StopIteration:
            first = None
        if first is None:
            raise CronError(f"cron expression {expr!r} never matches")

    def __repr__(self) -> str:
        return f"Cron({self.expr!r}, {self.tz!r})"

    # -- local date-times <-> instants ---------------------------------------

    def local(self, instant: float) -> datetime:
        """The naive local date-time of ``instant`` (whole seconds)."""
        dt = datetime.fromtimestamp(int(instant // 1), self.zone)
        return dt.replace(tzinfo=None)

    def to_instant(self, naive: datetime) -> int:
        """The instant a naive local date-time ticks at (the DST rule above)."""
        early = int(naive.replace(tzinfo=self.zone, fold=0).timestamp())
        late = int(naive.replace(tzinfo=self.zone, fold=1).timestamp())
        if early <= late:
            return early  # normal (equal) or repeated: the first occurrence
        # In a gap: fold=1 read it with the offset after the change, so ``late``
        # lies before the change and ``early`` after it.  The change is the
        # first second whose offset is the one after.
        after = naive.replace(tzinfo=self.zone, fold=1).utcoffset()
        lo, hi = late, early  # offset(lo) is the one before, offset(hi) the one after
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, self.zone).utcoffset() == after:
                hi = mid
            else:
                lo = mid
        return hi

    # -- ticks ---------------------------------------------------------------

    def next_after(self, instant: float) -> int:
        """The first tick strictly after ``instant`` (epoch seconds)."""
        it = CronSim(self.expr, self.local(instant))
        for _ in range(_MAX_STEPS):
            try:
                t = self.to_instant(next(it))
            except StopIteration:
                break
            if t > instant:
                return t
        raise CronError(f"cron expression {self.expr!r} has no tick after {instant}")

    def backwards(self, instant: float) -> Iterator[int]:
        """Ticks at or before ``instant``, newest first, each once."""
        # Local times map to instants in the same order, but ``instant`` may lie
        # in the second pass of a repeated hour, whose local times map to the
        # first pass: so begin a few hours of local time later and let the
        # filter below drop what lies after ``instant``.
        start = self.local(instant) + _LOOK_BACK_FROM
        it = CronSim(self.expr, start, reverse=True)
        last = None
        for _ in range(_MAX_STEPS):
            try:
                t = self.to_instant(next(it))
            except StopIteration:
                return
            if t > instant or (last is not None and t >= last):
                continue
            last = t
            yield t

    def ticks_between(self, after: float, until: float, limit: int) -> list[int]:
        """The newest ``limit`` ticks in (after, until], oldest first."""
        out: list[int] = []
        if limit <= 0:
            return out
        for t in self.backwards(until):
            if t <= after:
                break
            out.append(t)
            if len(out) >= limit:
                break
        out.reverse()
        return out

    def describe(self, instant: float) -> str:
        """``instant`` as a local date-time with its offset (ISO 8601, seconds)."""
        return format_local(instant, self.zone)


def format_local(instant: float, tz: ZoneInfo | None = None) -> str:
    """ISO 8601 with the offset, in ``tz`` (UTC when None)."""
    dt = datetime.fromtimestamp(int(instant), tz or UTC)
    return dt.isoformat()


def validate(expr: str, tz: str) -> Cron:
    """Parse both or raise CronError with a one-line message."""
    return Cron(expr, tz)
