"""A throwaway PostgreSQL cluster for the tests.

``postgres_cluster`` (session scope) runs ``initdb`` into a fresh temporary
directory, starts the server on 127.0.0.1 with a free port and a unix socket
in that directory, and stops it with ``pg_ctl stop -m immediate`` at the end.
``postgres_url`` is a ``postgresql://`` URL of a database in it;
``pg_database_url`` gives each test a database of its own (dropped after).

The cluster itself is the bench's (``bench/pg.py``): one implementation for
both.  The binaries are looked for under ``/usr/lib/postgresql/*/bin``
(Debian's layout; the newest version wins), then on PATH.  Without them the tests that
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
import os
import time
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

from bench.pg import Cluster, find_pg_bin, run_sql, with_db
from bench.procs import HOST

SKIP_REASON = "PostgreSQL not installed: install the Debian package postgresql (CI's .ci/run does)"
#: When set (CI does), a missing PostgreSQL fails the tests instead of skipping them.
REQUIRE_ENV = "TRIO_PERIODIC_REQUIRE_POSTGRES"


class PgCluster(Cluster):
    """The bench's throwaway cluster (bench/pg.py), plus a database per test."""

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        run_sql(self.url, f'CREATE DATABASE "{name}"')
        return with_db(self.url, name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        run_sql(self.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def restart(self, down: float = 0.0) -> None:
        """``pg_ctl restart -m fast``: every connection is cut, the server comes
        back on the same port and socket.  With ``down`` (seconds) it is
        stopped, stays down that long, then started again."""
        pg_ctl = (self.bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60")
        if not down:
            self._run(*pg_ctl, "-m", "fast", "restart")  # reuses the start options
            return
        self._run(*pg_ctl, "-m", "fast", "stop")
        time.sleep(down)
        options = (
            f"-c listen_addresses={HOST} -c port={self.port}"
            f" -c unix_socket_directories={self.sockets}"
        )
        self._run(*pg_ctl, "-o", options, "start")


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
