"""Global options, then parse and execute a ``periodic`` command line.

Parsing and executing are separate: :func:`parse` turns argv into an
:class:`~trio_periodic.cli.invocation.Invocation` (every command function of
the command modules only builds its command object), and :func:`execute` runs
it.  Errors of either kind end as one line on stderr and a non-zero exit
status, never a traceback.  ``periodic -d`` (the seed README's form) runs the
server.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated

from cyclopts import CycloptsError, Parameter

# The command modules register their commands on `app` when imported.
from trio_periodic.cli import (
    client_commands,
    retry_commands,
    schedule_commands,
    server_commands,
    worker_command,
)
from trio_periodic.cli.app import GLOBAL, PROG, UsageError, app
from trio_periodic.cli.invocation import (
    Command,
    ExecWorker,
    Globals,
    Invocation,
    Keygen,
    Serve,
    WorkerCmd,
)
from trio_periodic.server.options import DEFAULT_HTTP, ServerOptions
from trio_periodic.transport.rsa.options import DEFAULT_CLIENT_PUBLIC_PATH, RsaMode, RsaOptions
from trio_periodic.transport.tls import TlsOptions

__all__ = ["UsageError", "app", "execute", "main", "parse", "run_cli"]
_COMMAND_MODULES = (
    client_commands,
    schedule_commands,
    server_commands,
    worker_command,
    retry_commands,
)

# ------------------------------------------------------------------------ global options

_PARSE = {"result_action": "return_value", "exit_on_error": False, "print_error": False}


@app.meta.default
def _periodic(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    host: Annotated[
        list[str] | None,
        Parameter(name=["--host", "-H"], env_var="PERIODIC_PORT", group=GLOBAL),
    ] = None,
    client_name: Annotated[
        str | None, Parameter(env_var="PERIODIC_CLIENT_NAME", group=GLOBAL)
    ] = None,
    client_token: Annotated[
        str | None, Parameter(env_var="PERIODIC_CLIENT_TOKEN", group=GLOBAL)
    ] = None,
    tls_ca: Annotated[str | None, Parameter(env_var="PERIODIC_TLS_CA", group=GLOBAL)] = None,
    tls_cert: Annotated[str | None, Parameter(env_var="PERIODIC_TLS_CERT", group=GLOBAL)] = None,
    tls_key: Annotated[str | None, Parameter(env_var="PERIODIC_TLS_KEY", group=GLOBAL)] = None,
    rsa_mode: Annotated[str | None, Parameter(env_var="PERIODIC_RSA_MODE", group=GLOBAL)] = None,
    rsa_public_path: Annotated[
        str | None, Parameter(env_var="PERIODIC_RSA_PUBLIC_PATH", group=GLOBAL)
    ] = None,
    rsa_private_path: Annotated[
        str | None, Parameter(env_var="PERIODIC_RSA_PRIVATE_PATH", group=GLOBAL)
    ] = None,
    daemon: Annotated[bool, Parameter(name=["-d", "--daemon"], group=GLOBAL)] = False,
) -> Invocation | None:
    """Global options.

    Parameters
    ----------
    host
        Server URL: unix:///PATH, tcp://HOST:PORT, ws://HOST:PORT/PATH, or over TLS
        tls://HOST:PORT or wss://HOST:PORT/PATH (default unix:///tmp/periodic.sock).
        With -d or serve: listen here (repeatable).
    client_name
        Identity name, for servers with an auth file (with --client-token).
    client_token
        Identity token (with --client-name).
    tls_ca
        PEM CA certificates to check a tls:// or wss:// server with (default: the
        system's CAs).
    tls_cert
        PEM client certificate chain, for servers that require one (the key may be in
        the same file).
    tls_key
        PEM private key of --tls-cert, when it is in a file of its own.
    rsa_mode
        Plain, RSA or AES (default): the data phase of periodicd's RSA transport.
    rsa_public_path
        The server's RSA public key, PEM (default public_key.pem).
    rsa_private_path
        Our RSA private key (PKCS#1 PEM, see keygen): turns the RSA transport on
        (tcp:// and unix:// servers started with --rsa-private-path).
    daemon
        Run the server (the seed README's `periodic -d`); the same as `periodic serve`.
    """
    if (client_name is None) != (client_token is None):
        raise UsageError("--client-name and --client-token must be provided together")
    if tls_key is not None and tls_cert is None:
        raise UsageError("--tls-key needs --tls-cert")
    rsa = _rsa_options(rsa_mode, rsa_public_path, rsa_private_path)
    g = Globals(
        tuple(host or ()), client_name, client_token, TlsOptions(tls_ca, tls_cert, tls_key), rsa
    )
    if daemon:
        if tokens:
            raise UsageError(f"-d runs the server and takes no command (got {tokens[0]!r})")
        env = os.environ
        options = ServerOptions(
            path=env.get("PERIODIC_PATH") or None,
            log=env.get("PERIODIC_LOG") or "INFO",
            http=env.get("PERIODIC_HTTP") or DEFAULT_HTTP,
            # With -d there is no client: the certificate is the server's.
            tls_cert=tls_cert,
            tls_key=tls_key,
            rsa_private_path=rsa_private_path,
            rsa_public_path=rsa_public_path,
        )
        serve = Serve(g.hosts, options)
        return Invocation(g, serve)
    command: Command | None = app(tokens, **_PARSE)  # type: ignore[arg-type]
    if command is None:  # --help / --version printed, or no command: help printed
        return None
    if isinstance(command, Serve):
        command = replace(command, hosts=g.hosts)
    return Invocation(g, command)


def _rsa_options(
    mode: str | None, public_path: str | None, private_path: str | None
) -> RsaOptions | None:
    """The RSA transport is on with a private key, as in the reference tools."""
    if private_path is None:
        if mode is not None or public_path is not None:
            raise UsageError("--rsa-mode and --rsa-public-path need --rsa-private-path")
        return None
    try:
        parsed = RsaMode.AES if mode is None else RsaMode.parse(mode)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return RsaOptions(private_path, public_path or DEFAULT_CLIENT_PUBLIC_PATH, parsed)


# Options of `worker` that take a value, so that FUNC can be found without `--`.
_WORKER_VALUE_OPTS = frozenset(
    {"--thread", "--timeout", "--lock-name", "--lock-count", "--retry-secs", "--ready-timeout"}
)
_GLOBAL_VALUE_OPTS = frozenset(
    {
        "-H",
        "--host",
        "--client-name",
        "--client-token",
        "--tls-ca",
        "--tls-cert",
        "--tls-key",
        "--rsa-mode",
        "--rsa-public-path",
        "--rsa-private-path",
    }
)


def _add_worker_separator(argv: list[str]) -> list[str]:
    """``worker [OPTS] FUNC CMD ARGS…`` → ``worker [OPTS] FUNC -- CMD ARGS…``.

    The reference periodic-run takes the first non-option as FUNC and the
    rest as the command; cyclopts would read the command's own options as
    ours.  With an explicit ``--`` nothing changes.
    """
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in _GLOBAL_VALUE_OPTS else 1
    if i >= len(argv) or argv[i] != "worker" or "--" in argv[i:]:
        return argv
    j = i + 1
    while j < len(argv) and argv[j].startswith("-"):
        j += 2 if argv[j] in _WORKER_VALUE_OPTS or argv[j] in _GLOBAL_VALUE_OPTS else 1
    if j + 1 >= len(argv):
        return argv
    return [*argv[: j + 1], "--", *argv[j + 1 :]]


def parse(argv: Sequence[str]) -> Invocation | None:
    """Parse a command line (without the program name).

    Returns None when help or the version was printed.  Raises
    :class:`cyclopts.CycloptsError` or :class:`UsageError` for a bad command line.
    """
    tokens = _add_worker_separator(list(argv))
    result: Invocation | None = app.meta(tokens, **_PARSE)  # type: ignore[arg-type]
    return result


# ----------------------------------------------------------------------------- running


def _one_line(text: str) -> str:
    return " ".join(text.split())


def error(message: str) -> None:
    """Print ``periodic: message`` on stderr (the only way errors are reported)."""
    print(f"{PROG}: {_one_line(message)}", file=sys.stderr, flush=True)


def execute(inv: Invocation) -> int:
    """Run a parsed command line; return the exit status."""
    from trio_periodic.client.errors import PeriodicError
    from trio_periodic.protocol import ProtocolError

    command = inv.command
    try:
        if isinstance(command, Serve):
            return _serve(command)
        if isinstance(command, Keygen):
            return _keygen(command)
        import trio

        if isinstance(command, ExecWorker | WorkerCmd):
            from trio_periodic.cli.exec_worker import run_worker

            _configure_logging()
            return trio.run(run_worker, inv.globals, command)
        from trio_periodic.cli.client_runner import CliError, run_client

        try:
            return trio.run(run_client, inv.globals, command)
        except CliError as exc:
            error(str(exc))
            return 1
    except BaseException as exc:  # the one place errors become exit statuses
        leaf = _single(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        if isinstance(leaf, PeriodicError | ProtocolError | ValueError | OSError):
            error(str(leaf) or type(leaf).__name__)
            return 1
        raise


def _keygen(command: Keygen) -> int:
    from trio_periodic.cli.keygen import KeygenError, generate_key_files

    try:
        private, public = generate_key_files(command.file, command.size)
    except (KeygenError, OSError) as exc:
        error(str(exc))
        return 1
    print(f"Keys written to {private} and {public}")
    return 0


def _serve(command: Serve) -> int:
    from trio_periodic.server import daemon

    return daemon.run(command.hosts, command.options)


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _configure_logging() -> None:
    level = os.environ.get("PERIODIC_LOG", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"{PROG}: %(message)s",
        stream=sys.stderr,
    )


def run_cli(argv: Sequence[str]) -> int:
    """Parse and execute; return the exit status."""
    try:
        inv = parse(argv)
    except (CycloptsError, UsageError) as exc:
        error(f"{exc} (see '{PROG} --help')")
        return 2
    if inv is None:
        return 0
    return execute(inv)


def main() -> None:
    """Console script entry point."""
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
