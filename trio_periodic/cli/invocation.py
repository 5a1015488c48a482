"""What a ``periodic`` command line means, as plain data.

Parsing (:mod:`trio_periodic.cli`) turns argv into an :class:`Invocation`:
the global options plus one command object below.  Executing it is the job
of :mod:`trio_periodic.cli.client_runner` (one request to a server) and
:mod:`trio_periodic.cli.exec_worker` (workers running processes).  Keeping the
two apart lets the tests check every parse without a server.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from trio_periodic.client.transport import DEFAULT_URL
from trio_periodic.server.options import ServerOptions
from trio_periodic.transport.rsa.options import RsaOptions
from trio_periodic.transport.tls import TlsOptions

__all__ = [
    "Command",
    "ConfigGet",
    "ConfigSet",
    "Drop",
    "Dump",
    "ExecWorker",
    "Explain",
    "FailedList",
    "FailedPurge",
    "FailedRetry",
    "Globals",
    "Invocation",
    "Load",
    "Ping",
    "Recv",
    "Remove",
    "RetryClear",
    "RetryGet",
    "RetrySet",
    "RunJob",
    "ScheduleAdd",
    "ScheduleList",
    "ScheduleRemove",
    "Serve",
    "Shutdown",
    "Status",
    "Submit",
    "WorkerCmd",
]


@dataclass(frozen=True, slots=True)
class Globals:
    """Options that come before the command."""

    #: ``-H`` values (env ``PERIODIC_PORT``); clients use the first.
    hosts: tuple[str, ...] = ()
    client_name: str | None = None
    client_token: str | None = None
    #: ``--tls-ca`` / ``--tls-cert`` / ``--tls-key``, for tls:// and wss:// servers.
    tls: TlsOptions = field(default_factory=TlsOptions)
    #: ``--rsa-mode`` / ``--rsa-public-path`` / ``--rsa-private-path``; None: no RSA.
    rsa: RsaOptions | None = None

    @property
    def url(self) -> str:
        return self.hosts[0] if self.hosts else DEFAULT_URL

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client's TLS context when a --tls-* option is given (else None: the
        system's CAs); :class:`~trio_periodic.transport.tls.TlsError` for a file that
        cannot be used.  Built even for a plain URL, so a wrong path shows at once."""
        return self.tls.client_context() if self.tls.given else None


@dataclass(frozen=True, slots=True)
class Status:
    json: bool = False


@dataclass(frozen=True, slots=True)
class Explain:
    func: str
    name: str
    json: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleAdd:
    func: str
    name: str
    cron: str
    tz: str = "UTC"
    #: ``-w``: literal data, or ``@FILE`` for a file's contents.
    workload: str | None = None
    timeout: int = 0
    overlap: str = "skip"
    catch_up: str = "none"


@dataclass(frozen=True, slots=True)
class ScheduleList:
    json: bool = False


@dataclass(frozen=True, slots=True)
class ScheduleRemove:
    func: str
    name: str


@dataclass(frozen=True, slots=True)
class RetrySet:
    func: str
    max_attempts: int = 0
    backoff: str = "fixed"
    base: float = 1.0
    cap: float = 0.0
    jitter: bool = False


@dataclass(frozen=True, slots=True)
class RetryGet:
    func: str
    json: bool = False


@dataclass(frozen=True, slots=True)
class RetryClear:
    func: str


@dataclass(frozen=True, slots=True)
class FailedList:
    func: str | None = None
    json: bool = False


@dataclass(frozen=True, slots=True)
class FailedRetry:
    func: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FailedPurge:
    func: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Submit:
    func: str
    name: str
    #: ``-w``: literal data, or ``@FILE`` for a file's contents.
    workload: str | None = None
    #: The seed's ``--args``: always literal.
    args: str | None = None
    #: Seconds from now.
    later: int = 0
    timeout: int = 0


@dataclass(frozen=True, slots=True)
class RunJob:
    func: str
    name: str
    workload: str | None = None
    timeout: int = 10


@dataclass(frozen=True, slots=True)
class Recv:
    func: str
    name: str


@dataclass(frozen=True, slots=True)
class Remove:
    func: str
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Drop:
    funcs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConfigGet:
    key: str


@dataclass(frozen=True, slots=True)
class ConfigSet:
    key: str
    value: int


@dataclass(frozen=True, slots=True)
class Dump:
    path: str


@dataclass(frozen=True, slots=True)
class Load:
    path: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


@dataclass(frozen=True, slots=True)
class Serve:
    """Run the server (``periodic serve``, ``periodic -d``)."""

    #: Empty: the daemon's defaults.
    hosts: tuple[str, ...] = ()
    options: ServerOptions = field(default_factory=ServerOptions)


@dataclass(frozen=True, slots=True)
class ExecWorker:
    """The seed's ``periodic run -f FUNC --exec CMD``: stdout marker lines decide."""

    func: str
    #: Split on whitespace; the job name is appended.
    command: str
    thread: int = 1


@dataclass(frozen=True, slots=True)
class WorkerCmd:
    """``periodic worker FUNC -- COMMAND…`` (reference ``periodic-run`` / ``-run-pipe``)."""

    func: str
    command: tuple[str, ...]
    thread: int = 1
    #: Kill the process after this many seconds; None: the job's timeout; 0: never.
    timeout: int | None = None
    broadcast: bool = False
    lock_name: str | None = None
    lock_count: int = 1
    retry_secs: int = 0
    skip_fail: bool = False
    data: bool = False
    work_data: bool = False
    no_name: bool = False
    pipe: bool = False
    ready_timeout: int = 10
    #: Kill a process whose RSS goes over this many bytes (0: no limit).
    mem_limit: int = 0


@dataclass(frozen=True, slots=True)
class Keygen:
    """Write an RSA key pair (``periodic keygen``)."""

    file: str
    size: int = 256


Command = (
    Status
    | Submit
    | RunJob
    | Recv
    | Remove
    | Drop
    | ConfigGet
    | ConfigSet
    | Dump
    | Load
    | Ping
    | Shutdown
    | Explain
    | RetrySet
    | RetryGet
    | RetryClear
    | FailedList
    | FailedRetry
    | FailedPurge
    | ScheduleAdd
    | ScheduleList
    | ScheduleRemove
    | Serve
    | ExecWorker
    | WorkerCmd
    | Keygen
)


@dataclass(frozen=True, slots=True)
class Invocation:
    globals: Globals
    command: Command
