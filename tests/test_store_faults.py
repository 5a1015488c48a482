"""Store faults under a real periodicd: the disk fills up under SQLite;
PostgreSQL restarts under load.

The server runs as a subprocess and the clients are plain blocking sockets,
so nothing here shares the server's fate.  What must hold in each case:
requests the store could not make durable get an error reply (NO_WORKER),
every acknowledged job survives (checked after a ``kill -9`` and a restart),
the server keeps running and serves again once the fault is gone.

PostgreSQL is the tests' throwaway cluster (``pg_fixture.py``), restarted
with ``pg_ctl restart -m fast`` while clients submit and a worker runs jobs.

The full disk is a small tmpfs when we may mount one (root with
CAP_SYS_ADMIN), else the server's RLIMIT_FSIZE, lowered and raised from
outside with prlimit(2): writes past the limit then fail with EFBIG, as
they would with ENOSPC (CPython ignores SIGXFSZ, so the write just fails).
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DaemonProcess, start_daemon
from pg_fixture import PgCluster, pg_database_url, postgres_cluster  # noqa: F401  (fixtures)
from test_cluster import RecordingWorker, wait_for
from test_durability import BlockingConn, dump_names

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.job import Job

pytestmark = pytest.mark.slow

#: Seconds any phase may take before the test fails instead of hanging.
PHASE_TIMEOUT = 15
#: Bounds on the submitting loops (jobs).
MAX_SUBMITS = 3000
#: Consecutive rejections that mean "the disk is full now".
FULL_AFTER = 5


class Disk:
    """Where the database lives, and a way to make it full and to free it."""

    kind = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def limit(self, server: DaemonProcess) -> None:
        """From now on the server's writes run out of room soon."""

    def grow(self, server: DaemonProcess) -> None:
        """Room again."""

    def close(self) -> None:
        pass


class Tmpfs(Disk):
    kind = "tmpfs"
    SIZE = "1m"  # a few hundred one-job commits fill it (about 4 KB of WAL each)

    @classmethod
    def mount(cls, where: Path) -> Tmpfs | None:
        mount = shutil.which("mount")
        if mount is None or os.geteuid() != 0:
            return None
        where.mkdir()
        done = subprocess.run(
            [mount, "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
            capture_output=True, timeout=30,
        )  # fmt: skip
        return cls(where) if done.returncode == 0 else None

    def limit(self, server: DaemonProcess) -> None:
        self._remount(self.SIZE)

    def grow(self, server: DaemonProcess) -> None:
        self._remount("64m")

    def _remount(self, size: str) -> None:
        subprocess.run(
            ["mount", "-o", f"remount,size={size}", str(self.root)], check=True, timeout=30
        )

    def close(self) -> None:
        if subprocess.run(["umount", str(self.root)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


class FileSizeLimit(Disk):
    kind = "fsize"
    LIMIT = 256 * 1024  # bytes: the WAL reaches it after a few dozen commits

    def limit(self, server: DaemonProcess) -> None:
        _, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (self.LIMIT, hard))

    def grow(self, server: DaemonProcess) -> None:
        _, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))


def _fsize_possible() -> bool:
    return hasattr(resource, "prlimit") and hasattr(resource, "RLIMIT_FSIZE")


@pytest.fixture(params=["disk", "fsize"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    """``disk``: a real full filesystem (tmpfs) when we can mount one, else the
    file size limit; ``fsize``: always the file size limit, so that the
    fallback CI may need is tested wherever the tests run."""
    found: Disk | None = None
    if request.param == "disk":
        found = Tmpfs.mount(tmp_path / "tmpfs")
    if found is None and _fsize_possible():
        found = FileSizeLimit(tmp_path)
    if found is None:
        pytest.skip("cannot mount a tmpfs and no prlimit(RLIMIT_FSIZE) here")
    try:
        yield found
    finally:
        found.close()


def _submit(conn: BlockingConn, msgid: int, name: bytes) -> bool:
    """True when the server acknowledged the job (SUCCESS), False on NO_WORKER."""
    reply = conn.request(msgid, p.SubmitJob(Job(b"nobody", name, b"w" * 200)))
    assert isinstance(reply, p.Success | p.NoWorker), reply
    return isinstance(reply, p.Success)


class Filler(threading.Thread):
    """Pipelines submits (``WINDOW`` in flight) until the server rejected
    FULL_AFTER in a row, MAX_SUBMITS were sent or PHASE_TIMEOUT passed."""

    WINDOW = 16

    def __init__(
        self, port: int, prefix: bytes, func: bytes = b"nobody", until_full: bool = True
    ) -> None:
        super().__init__(daemon=True)
        self.conn = BlockingConn(port)
        self.prefix = prefix
        self.func = func
        #: False: go on through rejections, until MAX_SUBMITS or the deadline.
        self.until_full = until_full
        self.acked: set[bytes] = set()
        self.rejected: set[bytes] = set()
        self.streak = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.conn.close()

    def _run(self) -> None:
        names: dict[int, bytes] = {}
        sent = 0
        deadline = time.monotonic() + PHASE_TIMEOUT
        while True:
            stop = time.monotonic() > deadline or (self.until_full and self.streak >= FULL_AFTER)
            while not stop and sent < MAX_SUBMITS and len(names) < self.WINDOW:
                sent += 1
                names[sent] = self.prefix + b"-%d" % sent
                self.conn.send(sent, p.SubmitJob(Job(self.func, names[sent], b"w" * 200)))
            if not names:
                return
            reply = self.conn.recv()
            name = names.pop(reply.msgid)
            if isinstance(reply.packet, p.Success):
                self.acked.add(name)
                self.streak = 0
            else:
                assert isinstance(reply.packet, p.NoWorker), reply.packet
                self.rejected.add(name)
                self.streak += 1


def _kill_9(d: DaemonProcess) -> None:
    if d.proc.poll() is None:
        os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)


def test_disk_full_rejects_then_recovers_and_loses_nothing(disk: Disk) -> None:
    uri = f"file://{disk.root}/x.db"
    server = start_daemon("-p", uri)
    acked: set[bytes] = set()
    try:
        conn = BlockingConn(server.port)
        for i in range(20):
            assert _submit(conn, i + 1, b"before-%d" % i)
            acked.add(b"before-%d" % i)
        disk.limit(server)
        # Three clients pipeline submits until the store keeps failing for each;
        # their batches share transactions (group commit) as the disk runs full.
        fillers = [Filler(server.port, b"fill%d" % i) for i in range(3)]
        for f in fillers:
            f.start()
        for f in fillers:
            f.join(PHASE_TIMEOUT + 5)
            assert not f.is_alive() and f.error is None, f.error
            acked |= f.acked
        assert all(f.streak >= FULL_AFTER for f in fillers), "the disk never filled up"
        rejected = sum(len(f.rejected) for f in fillers)
        print(f"\n{disk.kind}: {len(acked)} acked, then {rejected} rejected as it filled up")
        assert server.proc.poll() is None
        assert any("store commit failed" in line for line in server.log)
        assert dump_names(server.port) >= acked  # reads still work

        disk.grow(server)
        deadline = time.monotonic() + PHASE_TIMEOUT
        msgid = 100
        while not _submit(conn, msgid, b"after-%d" % msgid):  # a first may meet a full page
            msgid += 1
            assert time.monotonic() < deadline and msgid < 200, "no recovery with space again"
        acked.add(b"after-%d" % msgid)
        for i in range(20):
            assert _submit(conn, 1000 + i, b"after-more-%d" % i)
            acked.add(b"after-more-%d" % i)
        conn.close()
    finally:
        _kill_9(server)
    server = start_daemon("-p", uri)
    try:
        stored = dump_names(server.port)
    finally:
        _kill_9(server)
    lost = acked - stored
    assert not lost, f"{len(lost)} acknowledged jobs lost, e.g. {sorted(lost)[:5]}"


@pytest.mark.postgres
@pytest.mark.parametrize("down", [0.0, 3.0], ids=["restart", "down-3s"])
def test_postgres_restart_under_load_loses_no_acknowledged_job(
    postgres_cluster: PgCluster,  # noqa: F811
    pg_database_url: str,  # noqa: F811
    down: float,
) -> None:
    """Two clients pipeline submits and a worker runs jobs while PostgreSQL
    restarts, or stays down for ``down`` seconds."""
    server = start_daemon("-p", pg_database_url)
    worker = RecordingWorker(server.port, b"f", slots=16)
    fillers = [Filler(server.port, b"c%d" % i, b"f", until_full=False) for i in range(2)]
    try:
        worker.start()
        for f in fillers:
            f.start()
        assert wait_for(lambda: sum(len(f.acked) for f in fillers) >= 300, PHASE_TIMEOUT)
        before = sum(len(f.acked) for f in fillers)
        started = time.monotonic()
        postgres_cluster.restart(down)
        restart_s = time.monotonic() - started
        for f in fillers:
            f.join(PHASE_TIMEOUT + 5)
            assert not f.is_alive() and f.error is None, f.error
        acked = set().union(*(f.acked for f in fillers))
        rejected = set().union(*(f.rejected for f in fillers))
        assert len(acked) > before, "nothing acknowledged after the restart"
        assert server.proc.poll() is None
        # It reconnected: it listens again, a fresh submit is acknowledged and run.
        assert wait_for(lambda: any("listening again" in ln for ln in server.log), PHASE_TIMEOUT)
        conn = BlockingConn(server.port)
        assert wait_for(lambda: _submit_to(conn, b"f", b"afterwards"), PHASE_TIMEOUT)
        conn.close()
        acked.add(b"afterwards")
        # Every acknowledged job runs (the worker reports each one done).
        assert wait_for(lambda: acked <= set(worker.seen), PHASE_TIMEOUT), (
            f"{len(acked - set(worker.seen))} acknowledged jobs never ran,"
            f" e.g. {sorted(acked - set(worker.seen))[:5]}"
        )
        print(
            f"\nrestart took {restart_s:.2f} s; {len(acked)} acked ({before} before it),"
            f" {len(rejected)} rejected, {len(worker.seen)} runs"
        )
    finally:
        for f in fillers:
            f.join(1)
        worker.stop()
        _kill_9(server)


_msgids = iter(range(10_000, 20_000))


def _submit_to(conn: BlockingConn, func: bytes, name: bytes) -> bool:
    reply = conn.request(next(_msgids), p.SubmitJob(Job(func, name)))
    return isinstance(reply, p.Success)
