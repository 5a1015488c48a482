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
functions listed for them, and STATUS shows only those.  SHUTDOWN, DUMP, LOAD
and CONFIG_SET are for admins only (the reference lets any identity use them).

The HTTP API applies the same rules (:func:`permits`) to the identity of an
``Authorization: Basic`` header (:meth:`AuthFile.identify_basic`).  Tokens
are compared in constant time; failed attempts are logged at most once per
:data:`FAILURE_LOG_INTERVAL` seconds per door, with a count of the rest.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import time
from collections.abc import Set as AbstractSet
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

#: Commands only an admin identity may send (stricter than the reference).
ADMIN_ONLY = frozenset({Cmd.SHUTDOWN, Cmd.DUMP, Cmd.LOAD, Cmd.CONFIG_SET})
#: Seconds between two log lines about failed authentications on one door.
FAILURE_LOG_INTERVAL = 10.0


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


def visible_funcs(identity: Identity | None) -> frozenset[bytes] | None:
    """The functions ``identity`` may see and touch, or None for all (no auth
    file, or an admin)."""
    return None if identity is None or identity.is_admin else identity.funcs


def permits(identity: Identity, cmd: Cmd, funcs: AbstractSet[bytes]) -> bool:
    """May ``identity`` send ``cmd`` touching ``funcs``?  (Role checks come first.)"""
    if identity.is_admin:
        return True
    if cmd in ADMIN_ONLY:
        return False
    return cmd not in FUNC_CHECKED or funcs <= identity.funcs


class FailureLog:
    """Log failed authentications without letting a flood of them flood the log."""

    def __init__(self, interval: float = FAILURE_LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def note(self, door: str, peer: str, why: str) -> None:
        now = time.monotonic()
        if now - self._last.get(door, -self.interval) < self.interval:
            self._suppressed[door] = self._suppressed.get(door, 0) + 1
            return
        self._last[door] = now
        more = self._suppressed.pop(door, 0)
        suffix = f" ({more} more failures since the last report)" if more else ""
        log.warning("%s: authentication failed for %s: %s%s", door, peer, why, suffix)


class AuthFile:
    """The rules in force, reloaded when the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.identities, self._mtime = self._load()
        self.failures = FailureLog()

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
        identity = self._check_token(registration.name, registration.token or b"")
        if identity is None:
            return None
        wanted = "worker" if registration.is_worker else "client"
        if identity.role not in (wanted, "admin"):
            return None
        return identity

    def identify_basic(self, header: bytes | None) -> Identity | None:
        """The identity of an ``Authorization: Basic base64(NAME:TOKEN)`` header.

        Any role may use HTTP; what it may do there is decided by :func:`permits`."""
        if header is None:
            return None
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        name, sep, token = decoded.partition(b":")
        return self._check_token(name, token) if sep else None

    def _check_token(self, name: bytes, token: bytes) -> Identity | None:
        identity = self.identities.get(name)
        if identity is None:
            # Compare anyway, so that an unknown name takes as long as a known one.
            hmac.compare_digest(token, token)
            return None
        return identity if hmac.compare_digest(identity.token, token) else None

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
