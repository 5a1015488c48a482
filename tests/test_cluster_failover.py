"""Failover: two periodicd on one PostgreSQL database, one SIGKILLed under load.

Submitters and workers on both servers.  Server B is killed while its
submitter is still sending and while a worker on B holds jobs it never
reports (they are running on B when it dies).  Then:

* every job either server acknowledged is done by a worker, none lost;
* the jobs running on B are handed out by A only after their lease ran out
  (a job is held by one worker at a time unless its timeout ran out), and
  the jobs B had claimed ahead come back the same way;
* the store ends up empty.

The take-over time (kill to the last of B's jobs handed out by A) is printed.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import DaemonProcess, start_daemon
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)
from raw_worker import RecordingWorker, wait_for
from test_durability import BlockingConn, dump_names

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.job import Job

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

#: The jobs' timeout (s): their lease is this plus LEASE_GRACE (5 s).
TIMEOUT = 2


class Submitter(threading.Thread):
    """Pipelines SUBMIT_JOBs (window 32); ``acked`` holds each name whose SUCCESS arrived."""

    def __init__(self, port: int, prefix: bytes, count: int) -> None:
        super().__init__(daemon=True)
        self.conn = BlockingConn(port)
        self.prefix, self.count = prefix, count
        self.acked: list[bytes] = []

    def run(self) -> None:
        names: dict[int, bytes] = {}
        sent = 0
        try:
            while len(self.acked) < self.count:
                while sent < self.count and len(names) < 32:
                    sent += 1
                    names[sent] = name = self.prefix + b"-%d" % sent
                    self.conn.send(sent, p.SubmitJob(Job(b"f", name, timeout=TIMEOUT)))
                r = self.conn.recv()
                if isinstance(r.packet, p.Success):
                    self.acked.append(names.pop(r.msgid))
        except (OSError, ConnectionError):
            return  # the server was killed: what was acked is in `acked`


def test_killing_one_server_under_load_loses_no_acknowledged_job(
    pg_database_url: str,  # noqa: F811
) -> None:
    a = start_daemon("-p", pg_database_url)
    b = start_daemon("-p", pg_database_url)
    daemons: list[DaemonProcess] = [a, b]
    on_a = [RecordingWorker(a.port, b"f", slots=4), RecordingWorker(a.port, b"f", slots=4)]
    on_b = [RecordingWorker(b.port, b"f", slots=4), RecordingWorker(b.port, b"f", slots=4)]
    hanging = RecordingWorker(b.port, b"f", slots=2, hang=True)
    workers = [*on_a, *on_b, hanging]
    subs = [Submitter(a.port, b"a", 1500), Submitter(b.port, b"b", 100_000)]
    try:
        for t in [*workers, *subs]:
            t.start()

        def done() -> int:
            return sum(len(w.seen) for w in workers)

        # Mid-load: B's submitter still sending, B's workers busy, the hanging
        # worker holding its jobs.
        assert wait_for(lambda: done() > 600 and len(hanging.seen) == 2, 20)
        time.sleep(0.2)  # let the hanging worker's confirmations (lease extensions) land
        killed_at = time.monotonic()
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait(10)
        for t in subs:
            t.join(20)
        acked = set(subs[0].acked) | set(subs[1].acked)
        assert len(subs[0].acked) == 1500 and len(subs[1].acked) > 100

        def seen_on_a() -> set[bytes]:
            return {name for w in on_a for name in w.seen}

        def seen_done() -> set[bytes]:
            return {name for w in [*on_a, *on_b] for name in w.seen}

        def everything_done() -> bool:
            # A job leaves the store only once a worker reported it: with the
            # store empty, every acknowledged job must have been run.  (One a
            # worker on B finished may have been run again by A, if B died
            # before its delete committed.)
            return acked <= seen_done() and dump_names(a.port) == set()

        assert wait_for(everything_done, 20), (
            f"{len(acked - seen_done())} acknowledged jobs never run; "
            f"{len(dump_names(a.port))} jobs left in the store"
        )
        # The jobs that were running on B were handed out again by A, but not
        # before their timeout (counted from the hanging worker's confirmation).
        handed: dict[bytes, float] = {}
        for w in on_a:
            for name, at in zip(w.seen, w.times, strict=True):
                handed.setdefault(name, at)
        for name, got_at in zip(hanging.seen, hanging.times, strict=True):
            assert name in handed, name
            assert handed[name] - got_at >= TIMEOUT, (name, handed[name] - got_at)
        took_over = max(handed[name] for name in hanging.seen) - killed_at
        last_b = max(at for w in on_a for at in w.times) - killed_at
        print(
            f"\nfailover: {len(acked)} jobs acknowledged, 0 lost; jobs running on the"
            f" killed server handed out by the other {took_over:.1f} s after the kill"
            f" (lease: timeout {TIMEOUT} s + 5 s grace); last job done {last_b:.1f} s after"
        )
        # Nothing was handed out by A twice.
        names_on_a = [name for w in on_a for name in w.seen]
        assert len(names_on_a) == len(set(names_on_a))
    finally:
        for w in workers:
            w.stop()
        for d in daemons:
            if d.proc.poll() is None:
                d.proc.terminate()
                d.proc.wait(10)


def test_a_server_shut_down_hands_back_the_jobs_it_claimed_ahead(
    pg_database_url: str,  # noqa: F811
) -> None:
    """A claims due jobs ahead of its (busy) worker; stopped gracefully, it
    hands them back at once instead of leaving them to their lease (here
    600 s, the default timeout, + 5 s)."""
    a = start_daemon("-p", pg_database_url, "--drain-timeout", "0.5")
    b = start_daemon("-p", pg_database_url)
    busy: RecordingWorker | None = None
    rescuer: RecordingWorker | None = None
    try:
        client = BlockingConn(a.port)
        names = [b"x%d" % i for i in range(5)]
        for i, name in enumerate(names):
            assert isinstance(client.request(i + 1, p.SubmitJob(Job(b"f", name))), p.Success)
        # The worker's slot takes x0; its claim takes x1..x4 ahead.
        busy = RecordingWorker(a.port, b"f", slots=1, hang=True)
        busy.start()
        assert wait_for(lambda: busy is not None and len(busy.seen) == 1, 5)
        client.close()
        time.sleep(0.5)  # the claims ahead land
        a.proc.terminate()
        a.proc.wait(10)
        stopped_at = time.monotonic()
        rescuer = RecordingWorker(b.port, b"f", slots=4)
        rescuer.start()
        assert wait_for(lambda: rescuer is not None and len(rescuer.seen) == 5, 10), rescuer.seen
        took = time.monotonic() - stopped_at
        assert set(rescuer.seen) == set(names)
        assert took < 5, took
    finally:
        for w in (busy, rescuer):
            if w is not None:
                w.stop()
        for d in (a, b):
            if d.proc.poll() is None:
                d.proc.terminate()
                d.proc.wait(10)
