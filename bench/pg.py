"""PostgreSQL for ``periodic-pg`` and ``scale``: a throwaway cluster, or the user's URL.

The throwaway cluster (the tests' PostgreSQL fixture uses it too): ``initdb`` into a temporary
directory (as the ``postgres`` system user when we run as root: PostgreSQL refuses root),
started with ``pg_ctl`` on 127.0.0.1 with a free port and its unix socket in that directory,
PostgreSQL's default settings otherwise (``fsync`` on, ``synchronous_commit`` on).  ``stop``
runs ``pg_ctl stop -m immediate`` and then SIGKILLs the postmaster by the PID in
``postmaster.pid`` if it is still there; the CLI calls it in a ``finally``.

Each scenario run gets a database of its own (``fresh``: CREATE DATABASE, then DROP DATABASE
… WITH (FORCE) after), so runs never see each other's jobs.  With a user-given ``--pg-url``
the bench cannot assume it may create databases: it drops the ``periodic_*`` tables in that
database before each run instead.

SQL goes through psycopg when this Python has it, else through ``psql``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.procs import HOST, cpu_seconds, free_port

PG_USER = "postgres"
TABLES = ("periodic_jobs", "periodic_funcs", "periodic_configs", "periodic_meta")


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``psql`` (Debian's
    ``/usr/lib/postgresql/*/bin``, newest first, then PATH), or None."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path))

    needed = ("initdb", "pg_ctl", "psql")
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(os.path.join(bindir, b), os.X_OK) for b in needed):
            return Path(bindir)
    initdb = shutil.which("initdb")
    if initdb and all(shutil.which(b) for b in needed):
        return Path(initdb).parent
    return None


def ensure_postgres(install: bool, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """The PostgreSQL bin directory, installing the Debian package ``postgresql`` if allowed
    and needed; else (None, why not)."""
    found = find_pg_bin()
    if found is not None:
        return found, ""
    if not install:
        return None, "PostgreSQL binaries not found (--no-install)"
    apt = shutil.which("apt-get")
    if apt is None:
        return None, "PostgreSQL binaries not found and apt-get not available"
    if os.geteuid() != 0:
        return None, "PostgreSQL binaries not found; not root, cannot apt-get install"
    log("installing postgresql with apt-get (once)…")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [apt, "install", "-y", "--no-install-recommends", "postgresql"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        subprocess.run([apt, "update"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    found = find_pg_bin()
    if found is not None:
        return found, ""
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"apt-get install postgresql failed: {last}"
    return None, "PostgreSQL binaries still not found after apt-get install postgresql"


def _ensure_user(user: str) -> None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", user],
            check=True, capture_output=True,
        )  # fmt: skip


def with_db(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def run_sql(url: str, *statements: str, psql: Path | None = None) -> None:
    """Run each statement in autocommit mode (CREATE/DROP DATABASE cannot run in a block)."""
    try:
        import psycopg
    except ImportError:
        psycopg = None  # type: ignore[assignment]
    if psycopg is not None:
        with psycopg.connect(url, autocommit=True, connect_timeout=30) as conn:
            for sql in statements:
                conn.execute(sql.encode())
        return
    binary = str(psql) if psql else shutil.which("psql")
    if binary is None:
        raise RuntimeError("neither psycopg nor psql is available to talk to PostgreSQL")
    cmd = [binary, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url]
    for sql in statements:
        cmd += ["-c", sql]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"psql: {done.stderr.strip() or done.stdout.strip()}")


#: pg_stat_database counters of one database: transactions committed, rows written.
_COUNTERS = (
    "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted"
    " FROM pg_stat_database WHERE datname = current_database()"
)


def db_counters(url: str) -> tuple[float, float]:
    """(transactions committed, rows inserted + updated + deleted) in ``url``'s database so
    far, from pg_stat_database; nan without psycopg.  A backend reports its counts when it
    goes idle (at most once a second) and when it exits: read the final figures after the
    servers stopped.  The query itself is one transaction."""
    try:
        import psycopg
    except ImportError:
        return float("nan"), float("nan")
    with psycopg.connect(url, autocommit=True, connect_timeout=30) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(_COUNTERS).fetchone()
    if row is None:
        return float("nan"), float("nan")
    return float(row[0]), float(row[1])


class Databases:
    """Where ``periodic-pg`` runs get their database: ``fresh(tag)`` yields a URL of an empty
    one, ``stop`` ends a cluster we started."""

    kind = "external"

    def __init__(self, url: str) -> None:
        self.url = url
        self.psql = find_pg_bin()

    def describe(self) -> str:
        return "the database at --pg-url (its periodic_* tables dropped before each run)"

    @contextlib.contextmanager
    def fresh(self, tag: str) -> Iterator[str]:
        run_sql(self.url, f"DROP TABLE IF EXISTS {', '.join(TABLES)}", psql=self._psql())
        yield self.url

    def _psql(self) -> Path | None:
        return self.psql / "psql" if self.psql else None

    def db_pid(self) -> int | None:
        """The postmaster's PID when the cluster is ours (for its CPU time), else None."""
        return None

    def db_cpu(self) -> float:
        pid = self.db_pid()
        return cpu_seconds(pid) if pid else float("nan")

    def stop(self) -> None:
        pass


class Cluster(Databases):
    """A throwaway cluster on 127.0.0.1 in a temporary directory."""

    kind = "throwaway"

    def __init__(self, bindir: Path, parent: Path | None = None) -> None:
        self.bindir = bindir
        self.psql = bindir
        self.root = Path(tempfile.mkdtemp(prefix="trio-periodic-bench-pg-", dir=parent))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = 0
        self.as_user = PG_USER if os.geteuid() == 0 else None
        self.started = False
        self.url = ""
        self.version = ""

    def describe(self) -> str:
        return (
            f"a throwaway PostgreSQL {self.version} cluster on {HOST}:{self.port} "
            "(default settings: fsync and synchronous_commit on), a fresh database per run"
        )

    def _run(self, *argv: str | Path, timeout: float = 120) -> str:
        cmd = [str(a) for a in argv]
        if self.as_user is not None:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()} {self.log_tail()}"
            )
        return proc.stdout

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def start(self) -> None:
        self.sockets.mkdir()
        if self.as_user is not None:
            _ensure_user(self.as_user)
            entry = pwd.getpwnam(self.as_user)
            for path in (self.root, self.sockets):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        text = self._run(self.bindir / "postgres", "--version")
        self.version = (re.findall(r"\d+(?:\.\d+)+", text) or ["?"])[0]
        self._run(
            self.bindir / "initdb",
            "-D", self.data, "-U", PG_USER, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions",
        )  # fmt: skip
        last: Exception | None = None
        for _ in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            options = (
                f"-c listen_addresses={HOST} -c port={self.port}"
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
            self.url = f"postgresql://{PG_USER}@{HOST}:{self.port}/postgres"
            return
        raise RuntimeError(f"could not start PostgreSQL: {last}")

    def db_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    @contextlib.contextmanager
    def fresh(self, tag: str) -> Iterator[str]:
        name = f"{re.sub(r'[^a-z0-9]+', '_', tag.lower())}_{uuid.uuid4().hex[:8]}"
        run_sql(self.url, f'CREATE DATABASE "{name}"', psql=self._psql())
        try:
            yield with_db(self.url, name)
        finally:
            drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            with contextlib.suppress(Exception):
                run_sql(self.url, drop, psql=self._psql())

    def stop(self) -> None:
        """``pg_ctl stop -m immediate``, then SIGKILL by PID if the postmaster is still there;
        the directory is removed."""
        if self.started:
            self.started = False
            pid = self.db_pid()
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate", "stop",
                          timeout=60)  # fmt: skip
            if pid is not None and _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                end = time.monotonic() + 5
                while _alive(pid) and time.monotonic() < end:
                    time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
