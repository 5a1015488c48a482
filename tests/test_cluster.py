"""Two periodicd processes on one PostgreSQL database form one job server."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
from conftest import DaemonProcess, start_daemon
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)
from raw_worker import RecordingWorker, wait_for
from test_durability import BlockingConn, dump_names

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.job import Job

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def stop(*daemons: DaemonProcess) -> None:
    for d in daemons:
        if d.proc.poll() is None:
            d.proc.terminate()
            d.proc.wait(10)


def test_every_job_runs_exactly_once_across_two_servers(pg_database_url: str) -> None:  # noqa: F811
    a = start_daemon("-p", pg_database_url)
    b = start_daemon("-p", pg_database_url)
    workers = [RecordingWorker(d.port, b"f") for d in (a, b, a, b)]
    try:
        for w in workers:
            w.start()
        clients = [BlockingConn(a.port), BlockingConn(b.port)]
        names = [b"job-%d" % i for i in range(2000)]
        for i, name in enumerate(names):
            clients[i % 2].send(i + 1, p.SubmitJob(Job(b"f", name)))
        acks = [0, 0]
        for i in range(2):
            while acks[i] < len(names) // 2:
                assert isinstance(clients[i].recv().packet, p.Success)
                acks[i] += 1
        assert wait_for(lambda: sum(len(w.seen) for w in workers) >= len(names), 60)
        time.sleep(0.5)  # anything handed out twice would show up now
        counts = Counter(name for w in workers for name in w.seen)
        assert set(counts) == set(names)
        twice = [n for n, c in counts.items() if c > 1]
        where = {n: [i for i, w in enumerate(workers) for x in w.seen if x == n] for n in twice}
        assert twice == [], f"handed out twice (worker indexes; 0, 2 on A): {where}"

        assert all(w.seen for w in workers), "every worker on both servers took part"
        assert wait_for(lambda: dump_names(a.port) == set() == dump_names(b.port), 10)
    finally:
        for w in workers:
            w.stop()
        stop(a, b)


def test_job_submitted_on_one_server_runs_on_the_other(pg_database_url: str) -> None:  # noqa: F811
    a = start_daemon("-p", pg_database_url)
    b = start_daemon("-p", pg_database_url)
    worker = RecordingWorker(b.port, b"only-b")
    try:
        worker.start()
        client = BlockingConn(a.port)
        started = time.monotonic()
        assert isinstance(client.request(1, p.SubmitJob(Job(b"only-b", b"x"))), p.Success)
        assert wait_for(lambda: worker.seen == [b"x"], 5)
        assert time.monotonic() - started < 1.0  # pushed by NOTIFY, not found by polling
        # both servers see the whole job set
        client.request(2, p.SubmitJob(Job(b"nobody", b"y")))
        assert wait_for(lambda: b"y" in dump_names(b.port), 2)
        status = BlockingConn(b.port).request(1, p.Status())
        assert isinstance(status, p.Data) and b"nobody,0,1,0,0," in status.data
    finally:
        worker.stop()
        stop(a, b)


def test_running_job_of_a_dead_server_is_handed_out_after_its_lease(
    pg_database_url: str,  # noqa: F811
) -> None:
    a = start_daemon("-p", pg_database_url)
    b = start_daemon("-p", pg_database_url)
    hanging = RecordingWorker(b.port, b"f", hang=True)
    rescuer: RecordingWorker | None = None
    try:
        hanging.start()
        client = BlockingConn(b.port)
        assert isinstance(client.request(1, p.SubmitJob(Job(b"f", b"z", timeout=2))), p.Success)
        assert wait_for(lambda: hanging.seen == [b"z"], 5)
        time.sleep(0.3)  # let the confirmation (and its lease extension) land
        killed_at = time.monotonic()
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait(10)
        rescuer = RecordingWorker(a.port, b"f")
        rescuer.start()
        assert wait_for(lambda: rescuer is not None and rescuer.seen == [b"z"], 15)
        waited = time.monotonic() - killed_at
        # not before the lease (timeout 2 s + grace 5 s from the confirmation) ran out
        assert 5.5 < waited < 12, waited
    finally:
        hanging.stop()
        if rescuer is not None:
            rescuer.stop()
        stop(a, b)


def test_delete_made_while_a_server_could_not_listen_reaches_it(
    pg_database_url: str,  # noqa: F811
) -> None:
    """A's LISTEN connection dies and cannot come back while B removes a job:
    A hears no notification, yet drops the job once it listens again."""
    import psycopg

    db = pg_database_url.rsplit("/", 1)[1]
    a = start_daemon("-p", pg_database_url + "?application_name=server-a")
    b = start_daemon("-p", pg_database_url)
    admin = psycopg.connect(pg_database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True)
    try:
        client_a, client_b = BlockingConn(a.port), BlockingConn(b.port)
        for i, name in enumerate((b"gone", b"kept")):  # nobody serves "idle": they stay put
            assert isinstance(client_a.request(i + 1, p.SubmitJob(Job(b"idle", name))), p.Success)
        assert wait_for(lambda: dump_names(b.port) == {b"gone", b"kept"}, 5)
        admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'server-a' AND query LIKE 'LISTEN%%'"
            )
            assert wait_for(lambda: any("lost the LISTEN" in line for line in a.log), 5)
            # B removes it on the pooled connection it already has.
            assert isinstance(client_b.request(9, p.RemoveJob(b"idle", b"gone")), p.Success)
            assert dump_names(b.port) == {b"kept"}
            time.sleep(0.5)
            assert dump_names(a.port) == {b"gone", b"kept"}  # A cannot know yet
        finally:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        assert wait_for(lambda: dump_names(a.port) == {b"kept"}, 10)
        assert any("1 jobs were deleted elsewhere" in line for line in a.log)
        client_a.close()
        client_b.close()
    finally:
        admin.close()
        stop(a, b)
