"""Command codes, client types and framing constants of the Periodic wire protocol.

See PROTOCOL.md §4 (registration), §5 (framing) and §8 (command codes).
"""

from __future__ import annotations

import enum

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "HEADER_SIZE",
    "MAGIC_REQ",
    "MAGIC_RES",
    "MAX_GARBAGE",
    "ClientType",
    "Cmd",
]


class Cmd(enum.IntEnum):
    """One-byte command codes (PROTOCOL.md §8).

    0–34 are the reference's.  64 (EXTENSION) is ours: a JSON request and its
    JSON answer, for what the reference has no command for (retry policies,
    schedules, explain); the reference server closes a connection that sends
    it.  Every other code is invalid on the wire."""

    NOOP = 0
    GRAB_JOB = 1
    SCHED_LATER = 2
    WORK_DONE = 3
    WORK_FAIL = 4
    JOB_ASSIGN = 5
    NO_JOB = 6
    CAN_DO = 7
    CANT_DO = 8
    PING = 9
    PONG = 10
    SLEEP = 11
    UNKNOWN = 12
    SUBMIT_JOB = 13
    STATUS = 14
    DROP_FUNC = 15
    SUCCESS = 16
    REMOVE_JOB = 17
    DUMP = 18
    LOAD = 19
    SHUTDOWN = 20
    BROADCAST = 21
    CONFIG_GET = 22
    CONFIG_SET = 23
    CONFIG = 24
    RUN_JOB = 25
    ACQUIRED = 26
    ACQUIRE = 27
    RELEASE = 28
    NO_WORKER = 29
    DATA = 30
    RECV_DATA = 31
    WORK_DATA = 32
    JOB_ASSIGNED = 33
    JOB_UNASSIGNED = 34
    EXTENSION = 64


class ClientType(enum.IntEnum):
    """The first body byte of a registration frame (PROTOCOL.md §4.1)."""

    CLIENT = 1
    WORKER = 2
    AUTH_CLIENT = 3
    AUTH_WORKER = 4


#: Magic of frames sent by clients and workers.
MAGIC_REQ = b"\x00REQ"
#: Magic of frames sent by the server.
MAGIC_RES = b"\x00RES"
#: magic (4) + u32 length (4) + u32 CRC-32 (4); the body follows.
HEADER_SIZE = 12
#: Largest value of the length field L we accept (bytes). The reference server
#: has no cap; we refuse bigger frames before buffering them.
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024
#: Bytes we are willing to skip while resynchronising on a magic before we
#: decide the peer is not speaking Periodic at all.
MAX_GARBAGE = 64 * 1024
