"""The ``periodic`` cyclopts application and what its command modules share.

The command modules (:mod:`.client_commands`, :mod:`.server_commands`,
:mod:`.worker_command`) register their commands on :data:`app`; every command
function only builds a command object of :mod:`.invocation`.  :mod:`.entry`
adds the global options and runs what was parsed.
"""

from __future__ import annotations

from typing import Annotated

import cyclopts
from cyclopts import Group, Parameter

from trio_periodic import __version__

PROG = "periodic"


class UsageError(Exception):
    """The command line is wrong (reported like a cyclopts parse error)."""


GLOBAL = Group("Global options", sort_key=0)
SEED = Group("Seed README forms", sort_key=5)
# Bool flags are plain switches (no generated --no-… negatives).
app = cyclopts.App(
    name=PROG,
    help="Talk to a Periodic job server: submit and run jobs, run workers, run the server.",
    version=__version__,
    default_parameter=Parameter(negative=()),
    help_format="markdown",
)
config_app = cyclopts.App(name="config", help="Read or change a server setting.")
app.command(config_app)

FuncOpt = Annotated[str | None, Parameter(name=["-f", "--func"], group=SEED)]
NameOpt = Annotated[str | None, Parameter(name=["-n", "--name"], group=SEED)]
WorkloadOpt = Annotated[str | None, Parameter(name=["-w", "--workload"])]


def pick(positional: str | None, flag: str | None, what: str, flag_name: str) -> str:
    if positional is not None and flag is not None:
        raise UsageError(f"give {what} either as an argument or with {flag_name}, not both")
    value = positional if positional is not None else flag
    if value is None:
        raise UsageError(f"missing {what} (an argument, or {flag_name})")
    return value
