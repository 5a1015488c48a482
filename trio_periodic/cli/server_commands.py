"""The server-side commands of ``periodic``: run the server, write RSA keys."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from trio_periodic.cli.app import app
from trio_periodic.cli.invocation import Keygen, Serve
from trio_periodic.server.options import ServerOptions


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
def serve(*, options: ServerOptions = ServerOptions()) -> Serve:  # noqa: B008 - frozen
    """Run the server (the same as `periodicd`) on every -H given (default: unix + tcp:5000)."""
    return Serve((), options)
