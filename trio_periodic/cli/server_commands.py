"""The server-side commands of ``periodic``: run the server, write RSA keys."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from trio_periodic.cli.app import app
from trio_periodic.cli.invocation import Keygen, Serve


@app.command
def keygen(file: str, /, *, size: Annotated[int, Parameter(name=["--size", "-s"])] = 256) -> Keygen:
    """Write FILE_private_key.pem and FILE_public_key.pem (PKCS#1 RSA, as the reference).

    Parameters
    ----------
    file
        Base name of the two files.
    size
        Key size in BYTES, as in the reference (256 = a 2048-bit key).
    """
    return Keygen(file, size)


@app.command
def serve(
    *,
    path: Annotated[str | None, Parameter(name=["--path", "-p"], env_var="PERIODIC_PATH")] = None,
    log: Annotated[str, Parameter(name="--log", env_var="PERIODIC_LOG")] = "INFO",
    http: Annotated[str | None, Parameter(name="--http", env_var="PERIODIC_HTTP")] = None,
    max_frame_size: Annotated[int | None, Parameter(name="--max-frame-size")] = None,
    auth_file: Annotated[str | None, Parameter(name="--auth-file")] = None,
) -> Serve:
    """Run the server (the same as `periodicd`) on every -H given (default: unix + tcp:5000).

    Parameters
    ----------
    path
        Job store: :memory:, file:///PATH (SQLite) or postgresql://… .
        Default: an SQLite file in the user's data directory.
    log
        Log level: DEBUG, INFO, WARNING or ERROR.
    http
        HTTP API address HOST:PORT (curl interface, /metrics, dashboard), or "off".
        Default: 127.0.0.1:8080.
    max_frame_size
        Largest frame accepted, in bytes.
    auth_file
        The reference auth file: "ROLE NAME TOKEN FUNC,FUNC..." lines; reloaded when it changes.
    """
    return Serve((), path, log, http, max_frame_size, auth_file)


