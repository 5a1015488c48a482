"""trio_periodic: a Periodic job server, client and worker library on Trio.

``from trio_periodic import Client, Worker, Job`` is the Python API (see
:mod:`trio_periodic.client`); ``periodicd`` and ``periodic`` are the command
line (see :mod:`trio_periodic.cli`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from trio_periodic.client import Client, Job, Worker

try:
    __version__ = version("trio-periodic")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["Client", "Job", "Worker", "__version__"]
