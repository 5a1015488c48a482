"""``periodicd``: run the server from the command line.

Startup prints, one line each, every address it listens on and the store it
opened.  SIGINT / SIGTERM drain: stop accepting, hand running jobs back (they
are pending in the store), close the store, remove the Unix socket, exit 0.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Annotated

import cyclopts
import trio
from cyclopts import Parameter

from trio_periodic.server.app import Server
from trio_periodic.server.auth import AuthFileError
from trio_periodic.server.options import DEFAULT_HOSTS, ServerOptions
from trio_periodic.store.base import StoreError
from trio_periodic.transport.listeners import ListenError

log = logging.getLogger("trio_periodic")


def default_store_uri() -> str:
    from trio_periodic.store.uri import default_store_uri as default

    return default()


async def serve(hosts: Sequence[str], options: ServerOptions) -> None:
    from trio_periodic.store.from_uri import open_store

    store = open_store(options.path or default_store_uri())
    server = Server(
        store,
        hosts,
        max_frame_size=options.max_frame_size,
        http=options.http_address,
        auth_file=options.auth_file,
        max_outbox=options.max_outbox,
        max_connections=options.max_connections,
        drain_timeout=options.drain_timeout,
        tls_cert=options.tls_cert,
        tls_key=options.tls_key,
        tls_client_ca=options.tls_client_ca,
        rsa_private_path=options.rsa_private_path,
        rsa_public_path=options.rsa_public_path,
        rsa_allow_legacy=options.rsa_allow_legacy,
        http_cors=options.http_cors,
        ws_origins=options.ws_origin,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, server)
        await server.run()
        nursery.cancel_scope.cancel()


async def _watch_signals(server: Server) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            server.request_shutdown()


def tune_gc() -> None:
    """Collect young objects far less often than CPython's default (every 700
    allocations).  Every stored job is a long-lived object; with the default
    the collector rescans them so often that it costs about 40% of the
    pipelined submit rate (124k vs 212k jobs/s measured).  Garbage is still
    freed at once by reference counting; only cycles wait a little longer."""
    gc.set_threshold(100_000, 50, 100)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(hosts: Sequence[str] | None, options: ServerOptions) -> int:
    """Run the daemon until shutdown; return the process exit status."""
    configure_logging(options.log)
    tune_gc()
    try:
        trio.run(serve, list(hosts or DEFAULT_HOSTS), options)
    except BaseException as exc:
        known = startup_error(exc)
        if known is None:
            raise
        print(f"periodicd: {' '.join(str(known).split())}", file=sys.stderr)
        return 1
    return 0


#: What can stop the server from starting, reported as one line (not a traceback).
STARTUP_ERRORS = (StoreError, ListenError, AuthFileError)


def startup_error(exc: BaseException) -> BaseException | None:
    """The error to report for a failed start: the first known one inside
    ``exc`` (trio wraps errors raised in nurseries in exception groups)."""
    if isinstance(exc, STARTUP_ERRORS):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = startup_error(inner)
            if found is not None:
                return found
    return None


app = cyclopts.App(name="periodicd", help="The trio_periodic job server.")


@app.default
def periodicd(
    *,
    host: Annotated[
        list[str] | None, Parameter(name=["--host", "-H"], env_var="PERIODIC_PORT")
    ] = None,
    options: ServerOptions = ServerOptions(),  # noqa: B008 - frozen, never mutated
) -> int:
    """Serve Periodic clients and workers.

    Parameters
    ----------
    host
        Listener URL, repeatable: tcp://HOST:PORT, unix:///PATH, ws://HOST:PORT[/PATH],
        and over TLS (with --tls-cert) tls://HOST:PORT or wss://HOST:PORT[/PATH].
        Default: unix:///tmp/periodic.sock and tcp://127.0.0.1:5000.
    """
    return run(host, options)


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
