"""The reference auth file (``--auth-file``, SEMANTICS.md §13).

Format, one identity per line::

    <role> <name> <token> <func1,func2,...>     # role: client, worker or admin

Leading blanks are ignored, ``#`` starts a comment, a later line with the same
name replaces an earlier one, and one invalid line makes the whole file
invalid: at startup the server refuses to start; on a reload the previous
rules stay in force.  The file's modification time is checked every second
and a changed file is swapped in atomically; a deleted file keeps the rules.

With an auth file every command needs the identity a connection registered
with (types 3 and 4): a known name, the right token, and a file role that is
``admin`` or matches the connection's role.  Anything else is answered
NO_WORKER and the connection stays open.  Non-admins may only touch the
functions listed for them, and STATUS shows only those.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from trio_periodic.protocol.constants import Cmd
from trio_periodic.protocol.frames import Registration
from trio_periodic.protocol.packets import Load, Packet, RecvData, RunJob, SubmitJob

log = logging.getLogger(__name__)

ROLES = ("client", "worker", "admin")
#: Commands whose function must be listed for a non-admin identity.
FUNC_CHECKED = frozenset(
    {
        Cmd.SUBMIT_JOB,
        Cmd.RUN_JOB,
        Cmd.RECV_DATA,
        Cmd.DROP_FUNC,
        Cmd.REMOVE_JOB,
        Cmd.LOAD,
        Cmd.CAN_DO,
        Cmd.BROADCAST,
    }
)


def packet_funcs(packet: Packet) -> set[bytes]:
    """The functions a command touches (for the per-identity function list)."""
    if isinstance(packet, Load):
        return {job.func for job in packet.jobs}
    if isinstance(packet, (SubmitJob, RunJob, RecvData)):
        return {packet.job.func}
    return {getattr(packet, "func", b"")}


class AuthFileError(Exception):
    """The auth file is unreadable or has an invalid line."""


@dataclass(frozen=True, slots=True)
class Identity:
    role: str
    name: bytes
    token: bytes
    funcs: frozenset[bytes]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def parse_auth_file(text: str, source: str = "auth file") -> dict[bytes, Identity]:
    identities: dict[bytes, Identity] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.split("#", 1)[0].lstrip(" \t\r").rstrip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 4:
            raise AuthFileError(f"{source}:{number}: expected 4 fields, got {len(fields)}")
        role, name, token, funcs = fields
        if role not in ROLES:
            raise AuthFileError(f"{source}:{number}: role must be one of {', '.join(ROLES)}")
        func_list = [f.encode() for f in funcs.split(",") if f]
        if not func_list:
            raise AuthFileError(f"{source}:{number}: at least one function is required")
        if any(len(f) > 255 for f in func_list):
            raise AuthFileError(f"{source}:{number}: function names are limited to 255 bytes")
        identities[name.encode()] = Identity(
            role, name.encode(), token.encode(), frozenset(func_list)
        )
    return identities


class AuthFile:
    """The rules in force, reloaded when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.identities, self._mtime = self._load()

    def _load(self) -> tuple[dict[bytes, Identity], float]:
        try:
            mtime = self.path.stat().st_mtime
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthFileError(f"cannot read auth file {self.path}: {exc}") from exc
        return parse_auth_file(text, str(self.path)), mtime

    def identify(self, registration: Registration | None) -> Identity | None:
        """The identity a connection may act as, or None (every command is refused)."""
        if registration is None or registration.name is None:
            return None
        identity = self.identities.get(registration.name)
        if identity is None or identity.token != registration.token:
            return None
        wanted = "worker" if registration.is_worker else "client"
        if identity.role not in (wanted, "admin"):
            return None
        return identity

    async def watch(self) -> None:
        """Check the file's modification time every second; swap in valid changes."""
        while True:
            await trio.sleep(1)
            try:
                mtime = self.path.stat().st_mtime
            except OSError:
                continue  # deleted: keep the rules we have
            if mtime == self._mtime:
                continue
            try:
                self.identities, self._mtime = self._load()
                log.info("auth file %s reloaded: %d identities", self.path, len(self.identities))
            except AuthFileError as exc:
                self._mtime = mtime
                log.error("%s; keeping the previous rules", exc)
