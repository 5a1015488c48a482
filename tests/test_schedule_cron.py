"""Cron ticks in time zones, with explicit instants: the DST rule, exactly once."""

from __future__ import annotations

from datetime import datetime

import pytest

from trio_periodic.scheduler.cron import Cron, CronError


def at(iso: str) -> int:
    """An ISO date-time with its offset, as epoch seconds."""
    return int(datetime.fromisoformat(iso).timestamp())


def ticks(cron: Cron, start: str, until: str) -> list[str]:
    """Every tick in (start, until], as local ISO date-times with offsets."""
    out = []
    t: float = at(start)
    end = at(until)
    for _ in range(10_000):
        t = cron.next_after(t)
        if t > end:
            break
        out.append(cron.describe(t))
    return out


# (zone, expression, from, until, expected ticks) over the day of a change.
CASES = [
    # Paris, spring forward 2026-03-29 02:00 CET -> 03:00 CEST.
    ("Europe/Paris", "30 2 * * *", "2026-03-28T00:00+01:00", "2026-03-30T12:00+02:00",
     ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    ("Europe/Paris", "0 * * * *", "2026-03-29T00:30+01:00", "2026-03-29T04:30+02:00",
     ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"]),
    # Paris, fall back 2026-10-25 03:00 CEST -> 02:00 CET (02:00-02:59 twice).
    ("Europe/Paris", "30 2 * * *", "2026-10-24T00:00+02:00", "2026-10-26T12:00+01:00",
     ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("Europe/Paris", "0 * * * *", "2026-10-25T00:30+02:00", "2026-10-25T04:30+01:00",
     ["2026-10-25T01:00:00+02:00", "2026-10-25T02:00:00+02:00", "2026-10-25T03:00:00+01:00",
      "2026-10-25T04:00:00+01:00"]),
    # New York, spring forward 2026-03-08 02:00 EST -> 03:00 EDT.
    ("America/New_York", "30 2 * * *", "2026-03-07T00:00-05:00", "2026-03-09T12:00-04:00",
     ["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("America/New_York", "*/30 * * * *", "2026-03-08T01:00-05:00", "2026-03-08T04:00-04:00",
     ["2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00",
      "2026-03-08T04:00:00-04:00"]),
    # New York, fall back 2026-11-01 02:00 EDT -> 01:00 EST (01:00-01:59 twice).
    ("America/New_York", "30 1 * * *", "2026-10-31T00:00-04:00", "2026-11-02T12:00-05:00",
     ["2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("America/New_York", "0 * * * *", "2026-11-01T00:30-04:00", "2026-11-01T03:30-05:00",
     ["2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00", "2026-11-01T03:00:00-05:00"]),
    # Lord Howe moves by half an hour: 2026-10-04 02:00 +10:30 -> 02:30 +11:00 ...
    ("Australia/Lord_Howe", "15 2 * * *", "2026-10-03T00:00+10:30", "2026-10-05T12:00+11:00",
     ["2026-10-03T02:15:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-05T02:15:00+11:00"]),
    ("Australia/Lord_Howe", "0,30 * * * *", "2026-10-04T01:00+10:30", "2026-10-04T03:00+11:00",
     ["2026-10-04T01:30:00+10:30", "2026-10-04T02:30:00+11:00", "2026-10-04T03:00:00+11:00"]),
    # ... and 2026-04-05 02:00 +11:00 -> 01:30 +10:30 (01:30-01:59 twice).
    ("Australia/Lord_Howe", "45 1 * * *", "2026-04-04T00:00+11:00", "2026-04-06T12:00+10:30",
     ["2026-04-04T01:45:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"]),
    ("Australia/Lord_Howe", "*/15 * * * *", "2026-04-05T01:00+11:00", "2026-04-05T02:15+10:30",
     ["2026-04-05T01:15:00+11:00", "2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00",
      "2026-04-05T02:00:00+10:30", "2026-04-05T02:15:00+10:30"]),
]  # fmt: skip


@pytest.mark.parametrize(("tz", "expr", "start", "until", "expected"), CASES)
def test_dst_days_tick_once_per_local_time(
    tz: str, expr: str, start: str, until: str, expected: list[str]
) -> None:
    assert ticks(Cron(expr, tz), start, until) == expected


@pytest.mark.parametrize(("tz", "expr", "start", "until", "expected"), CASES)
def test_backwards_agrees_with_forwards(
    tz: str, expr: str, start: str, until: str, expected: list[str]
) -> None:
    cron = Cron(expr, tz)
    got = cron.ticks_between(at(start), at(until), 100)
    assert [cron.describe(t) for t in got] == expected
    # The newest n only, oldest first.
    assert cron.ticks_between(at(start), at(until), 2) == got[-2:]


@pytest.mark.parametrize("tz", ["Europe/Paris", "America/New_York", "UTC"])
def test_a_year_of_quarter_hours_has_one_tick_per_existing_local_time(tz: str) -> None:
    cron = Cron("*/15 * * * *", tz)
    t: float = at("2026-01-01T00:00+00:00")
    end = at("2027-01-01T00:00+00:00")
    seen: list[int] = []
    while True:
        t = cron.next_after(t)
        if t > end:
            break
        seen.append(t)
    assert seen == sorted(set(seen))
    # A skipped hour's four quarter hours fall on its first instant after
    # (itself a quarter hour): four fewer; a repeated hour adds none.
    locals_ = {cron.local(x) for x in seen}
    assert len(locals_) == len(seen)
    dst_changes = 0 if tz == "UTC" else 1
    assert len(seen) == 365 * 24 * 4 - 4 * dst_changes


def test_utc_is_the_default_zone() -> None:
    cron = Cron("0 12 * * *")
    assert cron.tz == "UTC"
    assert (
        cron.describe(cron.next_after(at("2026-06-01T00:00+00:00"))) == "2026-06-01T12:00:00+00:00"
    )


def test_next_tick_is_strictly_after() -> None:
    cron = Cron("* * * * *")
    t = at("2026-06-01T10:00+00:00")
    assert cron.next_after(t) == t + 60
    assert cron.next_after(t - 0.5) == t
    assert cron.next_after(t + 30) == t + 60


@pytest.mark.parametrize(
    ("expr", "tz", "message"),
    [
        ("61 * * * *", "UTC", "bad cron expression"),
        ("* * *", "UTC", "5 fields"),
        ("0 * * * * *", "UTC", "5 fields"),
        ("0 0 30 2 *", "UTC", "bad cron expression"),
        ("nonsense here x y z", "UTC", "bad cron expression"),
        ("* * * * *", "Mars/Olympus_Mons", "unknown time zone"),
        ("* * * * *", "../../etc/passwd", "unknown time zone"),
        ("* * * * *", "", "unknown time zone"),
    ],
)
def test_bad_expressions_and_zones_are_refused(expr: str, tz: str, message: str) -> None:
    with pytest.raises(CronError, match=message) as info:
        Cron(expr, tz)
    assert "\n" not in str(info.value)


def test_newest_tick_seen_from_inside_a_repeated_hour() -> None:
    # 01:10 EST is the second pass of 01:00-01:59 on 2026-11-01 in New York: the
    # newest tick is 01:59 EDT (the second pass fires nothing), not 01:10 EDT.
    cron = Cron("* * * * *", "America/New_York")
    now = at("2026-11-01T01:10:30-05:00")
    newest = cron.ticks_between(now - 7200, now, 3)
    assert [cron.describe(t) for t in newest] == [
        "2026-11-01T01:57:00-04:00",
        "2026-11-01T01:58:00-04:00",
        "2026-11-01T01:59:00-04:00",
    ]
    assert cron.next_after(now) == at("2026-11-01T02:00:00-05:00")
