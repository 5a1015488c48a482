"""Trio client and worker for Periodic servers (periodicd and trio_periodic).

* :class:`Client` - submit / run / stream jobs, status, config, dump / load;
* :class:`Worker` - register functions with ``@worker.func(name)`` and
  ``await worker.work(size)``; reconnects by itself;
* :class:`Job` - what a worker function receives; :class:`Done`,
  :class:`Fail`, :class:`SchedLater` - what it may return.

All of it speaks through the sans-I/O :mod:`trio_periodic.protocol` package.
"""

from __future__ import annotations

from trio_periodic.client.client import Client, DataStream, FuncStatus, JobRun, parse_status
from trio_periodic.client.connection import Connection
from trio_periodic.client.errors import (
    ConnectError,
    ConnectionLost,
    JobFailed,
    NoWorker,
    PeriodicError,
    RequestTimeout,
    UnexpectedReply,
)
from trio_periodic.client.job import Done, Fail, Job, SchedLater
from trio_periodic.client.transport import DEFAULT_URL, default_url, parse_url
from trio_periodic.client.worker import Worker
from trio_periodic.transport.rsa.options import RsaKeyError, RsaMode, RsaOptions
from trio_periodic.transport.tls import TlsError, TlsOptions

__all__ = [
    "DEFAULT_URL",
    "Client",
    "ConnectError",
    "Connection",
    "ConnectionLost",
    "DataStream",
    "Done",
    "Fail",
    "FuncStatus",
    "Job",
    "JobFailed",
    "JobRun",
    "NoWorker",
    "PeriodicError",
    "RequestTimeout",
    "RsaKeyError",
    "RsaMode",
    "RsaOptions",
    "SchedLater",
    "TlsError",
    "TlsOptions",
    "UnexpectedReply",
    "Worker",
    "default_url",
    "parse_status",
    "parse_url",
]
