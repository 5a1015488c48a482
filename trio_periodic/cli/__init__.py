"""``periodic``: the command line client, worker runner and server launcher.

Parsing and executing are separate: :func:`parse` turns argv into an
:class:`~trio_periodic.cli.invocation.Invocation` (every command function
only builds its command object) and :func:`execute` runs it.

| module               | holds                                                    |
|----------------------|----------------------------------------------------------|
| ``app``              | the cyclopts app, option groups and shared option types  |
| ``client_commands``  | status, submit, run, recv, remove, drop, config, dump... |
| ``worker_command``   | ``worker`` (the reference periodic-run)                  |
| ``server_commands``  | ``serve`` and ``keygen``                                 |
| ``main``             | global options, the seed's ``-d``, parse / execute       |
| ``invocation``       | the parsed command line as plain data                    |
| ``client_runner``    | executes the client commands against a server            |
| ``exec_worker``      | the exec and pipe workers                                |
| ``process``          | child processes: run, time out, kill, memory limits      |
| ``keygen``           | RSA key pairs in the reference's PKCS#1 format           |
"""

from __future__ import annotations

from trio_periodic.cli.app import UsageError, app
from trio_periodic.cli.entry import execute, main, parse, run_cli

__all__ = ["UsageError", "app", "execute", "main", "parse", "run_cli"]
