"""A throwaway PostgreSQL cluster for the tests.

``postgres_cluster`` (session scope) runs ``initdb`` into a fresh temporary
directory, starts the server on 127.0.0.1 with a free port and a unix socket
in that directory, and stops it with ``pg_ctl stop -m immediate`` at the end.
``postgres_url`` is a ``postgresql://`` URL of a database in it;
``pg_database_url`` gives each test a database of its own (dropped after).

The binaries are looked for under ``/usr/lib/postgresql/*/bin`` (Debian's
layout; the newest version wins), then on PATH.  Without them the tests that
use these fixtures are skipped; they fail instead when
``$TRIO_PERIODIC_REQUIRE_POSTGRES`` is set (.ci/run sets it).  PostgreSQL
refuses to run as root, so when the tests run as root the cluster runs as the
``postgres`` system user (created if missing) through ``runuser``.

Use from a test module with ``from pg_fixture import pg_database_url,
postgres_cluster`` (or from ``tests/conftest.py``).  Importing the fixtures into several modules is
fine: they share one cluster per process.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

SKIP_REASON = "PostgreSQL not installed: install the Debian package postgresql (CI's .ci/run does)"
_PG_USER = "postgres"
#: When set (CI does), a missing PostgreSQL fails the tests instead of skipping them.
REQUIRE_ENV = "TRIO_PERIODIC_REQUIRE_POSTGRES"


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path))

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in ("initdb", "pg_ctl")):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    """One temporary cluster; ``start`` then ``stop`` (or use the fixtures)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="trio-periodic-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = 0
        self.as_user = _PG_USER if os.geteuid() == 0 else None
        self.started = False

    @property
    def admin_url(self) -> str:
        return f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql://{_PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str | Path, timeout: float = 120) -> None:
        cmd = [str(a) for a in argv]
        if self.as_user is not None:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
                f"\n{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return "server log:\n" + "".join(self.log.read_text().splitlines(True)[-30:])
        except OSError:
            return ""

    def start(self) -> None:
        self.sockets.mkdir()
        if self.as_user is not None:
            _ensure_user(self.as_user)
            entry = pwd.getpwnam(self.as_user)
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            self.bindir / "initdb",
            "-D", self.data, "-U", _PG_USER, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions",
        )  # fmt: skip
        last: Exception | None = None
        for _ in range(3):  # the free port may be taken before the server binds it
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port}"
                f" -c unix_socket_directories={self.sockets}"
            )
            try:
                self._run(
                    self.bindir / "pg_ctl",
                    "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, "start",
                )  # fmt: skip
            except RuntimeError as exc:
                last = exc
                continue
            self.started = True
            return
        raise RuntimeError(f"could not start PostgreSQL: {last}")

    def stop(self) -> None:
        if self.started:
            self.started = False
            try:
                self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ensure_user(user: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user],
            check=True, capture_output=True,
        )  # fmt: skip


# One cluster per process, shared by every importer of these fixtures.
_cluster: PgCluster | None = None
_users = 0


def _unavailable(reason: str) -> NoReturn:
    """Skip, unless $TRIO_PERIODIC_REQUIRE_POSTGRES is set (CI sets it): then fail."""
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(f"{reason} (and ${REQUIRE_ENV} is set)", pytrace=False)
    pytest.skip(reason)


def _acquire() -> PgCluster:
    global _cluster, _users
    if _cluster is None:
        bindir = find_pg_bin()
        if bindir is None:
            _unavailable(SKIP_REASON)
        try:
            import psycopg  # noqa: F401
        except ImportError:
            _unavailable("psycopg is not installed: pip install -e '.[test]'")
        cluster = PgCluster(bindir)
        atexit.register(cluster.stop)  # in case the session dies before teardown
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        _cluster = cluster
    _users += 1
    return _cluster


def _release() -> None:
    global _cluster, _users
    _users -= 1
    if _users == 0 and _cluster is not None:
        _cluster.stop()
        _cluster = None


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PgCluster]:
    cluster = _acquire()
    try:
        yield cluster
    finally:
        _release()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PgCluster) -> Iterator[str]:
    """A database in the session's cluster, shared by every test that asks."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)


@pytest.fixture
def pg_database_url(postgres_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database for one test."""
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)
