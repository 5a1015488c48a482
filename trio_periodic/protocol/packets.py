"""One dataclass per Periodic command, and the payload codec (PROTOCOL.md §8, §9).

A *payload* is what follows the command byte in a frame body. Each command has
a fixed layout built from str8 / i16 / u32 / i64 / Job / job list fields, or
ends in ``rest`` (all remaining bytes: WORK_DONE, WORK_DATA, DATA).

Decoding is table driven: ``_DECODERS[cmd](buf, pos)`` returns the packet and
the offset just after it, and :func:`decode_packet` insists that offset is the
end of the payload, because periodicd rejects trailing bytes (§5.2 step 3).
Decoders work on an offset into the caller's buffer so a frame body never has
to be sliced just to strip its msgid and command byte.

Packets without fields are immutable (``__slots__ == ()``), so decoding them
returns one shared instance instead of allocating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from . import _wire as w
from .constants import Cmd
from .errors import LocalProtocolError, RemoteProtocolError
from .job import Job, decode_job_at, decode_job_list_at, encode_job, encode_job_list

__all__ = [
    "PACKET_TYPES",
    "Acquire",
    "Acquired",
    "Broadcast",
    "CanDo",
    "CantDo",
    "Config",
    "ConfigGet",
    "ConfigSet",
    "Data",
    "DropFunc",
    "Dump",
    "GrabJob",
    "JobAssign",
    "JobAssigned",
    "JobUnassigned",
    "Load",
    "NoJob",
    "NoWorker",
    "Noop",
    "Packet",
    "Ping",
    "Pong",
    "RecvData",
    "Release",
    "RemoveJob",
    "RunJob",
    "SchedLater",
    "Shutdown",
    "Sleep",
    "Status",
    "SubmitJob",
    "Success",
    "Unknown",
    "WorkData",
    "WorkDone",
    "WorkFail",
    "decode_packet",
    "encode_payload",
]


# --- the packets -----------------------------------------------------------------------


@dataclass(slots=True)
class Noop:
    cmd: ClassVar[Cmd] = Cmd.NOOP


@dataclass(slots=True)
class GrabJob:
    cmd: ClassVar[Cmd] = Cmd.GRAB_JOB


@dataclass(slots=True)
class SchedLater:
    cmd: ClassVar[Cmd] = Cmd.SCHED_LATER
    func: bytes
    name: bytes
    #: Seconds relative to the server's now.
    delay: int
    #: Added to the job's run count (i16, signed when decoded).
    step: int


@dataclass(slots=True)
class WorkDone:
    cmd: ClassVar[Cmd] = Cmd.WORK_DONE
    func: bytes
    name: bytes
    data: bytes = b""


@dataclass(slots=True)
class WorkFail:
    cmd: ClassVar[Cmd] = Cmd.WORK_FAIL
    func: bytes
    name: bytes


@dataclass(slots=True)
class JobAssign:
    cmd: ClassVar[Cmd] = Cmd.JOB_ASSIGN
    job: Job


@dataclass(slots=True)
class NoJob:
    cmd: ClassVar[Cmd] = Cmd.NO_JOB


@dataclass(slots=True)
class CanDo:
    cmd: ClassVar[Cmd] = Cmd.CAN_DO
    func: bytes


@dataclass(slots=True)
class CantDo:
    cmd: ClassVar[Cmd] = Cmd.CANT_DO
    func: bytes


@dataclass(slots=True)
class Ping:
    cmd: ClassVar[Cmd] = Cmd.PING


@dataclass(slots=True)
class Pong:
    cmd: ClassVar[Cmd] = Cmd.PONG


@dataclass(slots=True)
class Sleep:
    cmd: ClassVar[Cmd] = Cmd.SLEEP


@dataclass(slots=True)
class Unknown:
    cmd: ClassVar[Cmd] = Cmd.UNKNOWN


@dataclass(slots=True)
class SubmitJob:
    cmd: ClassVar[Cmd] = Cmd.SUBMIT_JOB
    job: Job


@dataclass(slots=True)
class Status:
    cmd: ClassVar[Cmd] = Cmd.STATUS


@dataclass(slots=True)
class DropFunc:
    cmd: ClassVar[Cmd] = Cmd.DROP_FUNC
    func: bytes


@dataclass(slots=True)
class Success:
    cmd: ClassVar[Cmd] = Cmd.SUCCESS


@dataclass(slots=True)
class RemoveJob:
    cmd: ClassVar[Cmd] = Cmd.REMOVE_JOB
    func: bytes
    name: bytes


@dataclass(slots=True)
class Dump:
    cmd: ClassVar[Cmd] = Cmd.DUMP


@dataclass(slots=True)
class Load:
    cmd: ClassVar[Cmd] = Cmd.LOAD
    jobs: list[Job]


@dataclass(slots=True)
class Shutdown:
    cmd: ClassVar[Cmd] = Cmd.SHUTDOWN


@dataclass(slots=True)
class Broadcast:
    cmd: ClassVar[Cmd] = Cmd.BROADCAST
    func: bytes


@dataclass(slots=True)
class ConfigGet:
    cmd: ClassVar[Cmd] = Cmd.CONFIG_GET
    key: bytes


@dataclass(slots=True)
class ConfigSet:
    cmd: ClassVar[Cmd] = Cmd.CONFIG_SET
    key: bytes
    value: int


@dataclass(slots=True)
class Config:
    cmd: ClassVar[Cmd] = Cmd.CONFIG
    value: int


@dataclass(slots=True)
class RunJob:
    cmd: ClassVar[Cmd] = Cmd.RUN_JOB
    job: Job


@dataclass(slots=True)
class Acquired:
    cmd: ClassVar[Cmd] = Cmd.ACQUIRED
    ok: bool


@dataclass(slots=True)
class Acquire:
    cmd: ClassVar[Cmd] = Cmd.ACQUIRE
    lock: bytes
    #: Maximum number of concurrent holders (i16, signed when decoded).
    count: int
    func: bytes
    name: bytes


@dataclass(slots=True)
class Release:
    cmd: ClassVar[Cmd] = Cmd.RELEASE
    lock: bytes
    func: bytes
    name: bytes


@dataclass(slots=True)
class NoWorker:
    cmd: ClassVar[Cmd] = Cmd.NO_WORKER


@dataclass(slots=True)
class Data:
    cmd: ClassVar[Cmd] = Cmd.DATA
    #: The rest of the frame; DATA has no length prefix (PROTOCOL.md §15.5).
    data: bytes = b""


@dataclass(slots=True)
class RecvData:
    cmd: ClassVar[Cmd] = Cmd.RECV_DATA
    job: Job


@dataclass(slots=True)
class WorkData:
    cmd: ClassVar[Cmd] = Cmd.WORK_DATA
    func: bytes
    name: bytes
    data: bytes = b""


@dataclass(slots=True)
class JobAssigned:
    cmd: ClassVar[Cmd] = Cmd.JOB_ASSIGNED


@dataclass(slots=True)
class JobUnassigned:
    cmd: ClassVar[Cmd] = Cmd.JOB_UNASSIGNED


@dataclass(slots=True)
class Extension:
    """Not in the reference: a request or its answer, one JSON document (UTF-8)
    in the rest of the frame.  The protocol layer carries the bytes; the
    server's ``ops`` package gives them meaning."""

    cmd: ClassVar[Cmd] = Cmd.EXTENSION
    body: bytes = b""


Packet: TypeAlias = (
    Noop
    | GrabJob
    | SchedLater
    | WorkDone
    | WorkFail
    | JobAssign
    | NoJob
    | CanDo
    | CantDo
    | Ping
    | Pong
    | Sleep
    | Unknown
    | SubmitJob
    | Status
    | DropFunc
    | Success
    | RemoveJob
    | Dump
    | Load
    | Shutdown
    | Broadcast
    | ConfigGet
    | ConfigSet
    | Config
    | RunJob
    | Acquired
    | Acquire
    | Release
    | NoWorker
    | Data
    | RecvData
    | WorkData
    | JobAssigned
    | JobUnassigned
    | Extension
)

_ALL: tuple[type[Packet], ...] = (
    Noop, GrabJob, SchedLater, WorkDone, WorkFail, JobAssign, NoJob, CanDo, CantDo,
    Ping, Pong, Sleep, Unknown, SubmitJob, Status, DropFunc, Success, RemoveJob, Dump,
    Load, Shutdown, Broadcast, ConfigGet, ConfigSet, Config, RunJob, Acquired, Acquire,
    Release, NoWorker, Data, RecvData, WorkData, JobAssigned, JobUnassigned, Extension,
)  # fmt: skip

#: Command code → packet class, for every code the protocol defines.
PACKET_TYPES: dict[Cmd, type[Packet]] = {cls.cmd: cls for cls in _ALL}


# --- encoding --------------------------------------------------------------------------

_Encoder: TypeAlias = Callable[[Any], bytes]


def _enc_empty(p: Any) -> bytes:
    return b""


def _enc_func(p: CanDo | CantDo | DropFunc | Broadcast) -> bytes:
    return w.str8(p.func, "func")


def _enc_handle(p: WorkFail | RemoveJob) -> bytes:
    return w.str8(p.func, "func") + w.str8(p.name, "name")


def _enc_handle_rest(p: WorkDone | WorkData) -> bytes:
    return w.str8(p.func, "func") + w.str8(p.name, "name") + p.data


def _enc_job(p: JobAssign | SubmitJob | RunJob | RecvData) -> bytes:
    return encode_job(p.job)


def _enc_sched_later(p: SchedLater) -> bytes:
    return (
        w.str8(p.func, "func")
        + w.str8(p.name, "name")
        + w.U64_U16.pack(w.check_i64(p.delay, "delay"), w.check_i16(p.step, "step"))
    )


def _enc_load(p: Load) -> bytes:
    return encode_job_list(p.jobs)


def _enc_config_get(p: ConfigGet) -> bytes:
    return w.str8(p.key, "config key")


def _enc_config_set(p: ConfigSet) -> bytes:
    return w.str8(p.key, "config key") + w.U32.pack(w.check_u32(p.value, "config value"))


def _enc_config(p: Config) -> bytes:
    return w.U32.pack(w.check_u32(p.value, "config value"))


def _enc_acquired(p: Acquired) -> bytes:
    return b"\x01" if p.ok else b"\x00"


def _enc_acquire(p: Acquire) -> bytes:
    return b"".join(
        (
            w.str8(p.lock, "lock name"),
            w.U16.pack(w.check_i16(p.count, "lock count")),
            w.str8(p.func, "func"),
            w.str8(p.name, "name"),
        )
    )


def _enc_release(p: Release) -> bytes:
    return w.str8(p.lock, "lock name") + w.str8(p.func, "func") + w.str8(p.name, "name")


def _enc_data(p: Data) -> bytes:
    return bytes(p.data)


def _enc_extension(p: Extension) -> bytes:
    return bytes(p.body)


_ENCODERS: dict[type[Packet], _Encoder] = {cls: _enc_empty for cls in _ALL}
_ENCODERS.update(
    {
        SchedLater: _enc_sched_later,
        WorkDone: _enc_handle_rest,
        WorkFail: _enc_handle,
        JobAssign: _enc_job,
        CanDo: _enc_func,
        CantDo: _enc_func,
        SubmitJob: _enc_job,
        DropFunc: _enc_func,
        RemoveJob: _enc_handle,
        Load: _enc_load,
        Broadcast: _enc_func,
        ConfigGet: _enc_config_get,
        ConfigSet: _enc_config_set,
        Config: _enc_config,
        RunJob: _enc_job,
        Acquired: _enc_acquired,
        Acquire: _enc_acquire,
        Release: _enc_release,
        Data: _enc_data,
        RecvData: _enc_job,
        WorkData: _enc_handle_rest,
        Extension: _enc_extension,
    }
)


def encode_payload(packet: Packet) -> bytes:
    """The bytes that follow the command byte for ``packet``.

    Raises :class:`LocalProtocolError` when a field does not fit its wire type.
    """
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise LocalProtocolError(f"not a packet: {packet!r}") from None
    return encoder(packet)


# --- decoding --------------------------------------------------------------------------
# Each decoder takes (buffer, offset of the payload) and returns (packet, end offset).
# Short input surfaces as IndexError / struct.error, translated in decode_at().

_Decoder: TypeAlias = Callable[[Any, int], tuple[Packet, int]]


def _dec_constant(instance: Packet) -> _Decoder:
    def decode(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
        return instance, pos

    return decode


def _dec_func(cls: type[CanDo | CantDo | DropFunc | Broadcast]) -> _Decoder:
    def decode(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
        func, pos = w.read_str8(buf, pos)
        return cls(func), pos

    return decode


def _dec_handle(cls: type[WorkFail | RemoveJob]) -> _Decoder:
    def decode(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
        func, pos = w.read_str8(buf, pos)
        name, pos = w.read_str8(buf, pos)
        return cls(func, name), pos

    return decode


def _dec_handle_rest(cls: type[WorkDone | WorkData]) -> _Decoder:
    def decode(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
        func, pos = w.read_str8(buf, pos)
        name, pos = w.read_str8(buf, pos)
        end = len(buf)
        return cls(func, name, bytes(buf[pos:end])), end

    return decode


def _dec_job(cls: type[JobAssign | SubmitJob | RunJob | RecvData]) -> _Decoder:
    def decode(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
        job, pos = decode_job_at(buf, pos)
        return cls(job), pos

    return decode


def _dec_sched_later(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    func, pos = w.read_str8(buf, pos)
    name, pos = w.read_str8(buf, pos)
    delay, step = w.I64_I16.unpack_from(buf, pos)
    return SchedLater(func, name, delay, step), pos + 10


def _dec_load(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    jobs, pos = decode_job_list_at(buf, pos)
    return Load(jobs), pos


def _dec_config_get(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    key, pos = w.read_str8(buf, pos)
    return ConfigGet(key), pos


def _dec_config_set(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    key, pos = w.read_str8(buf, pos)
    (value,) = w.U32.unpack_from(buf, pos)
    return ConfigSet(key, value), pos + 4


def _dec_config(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    (value,) = w.U32.unpack_from(buf, pos)
    return Config(value), pos + 4


def _dec_acquired(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    # aio_periodic treats exactly 1 as "acquired"; anything else is "not".
    return Acquired(buf[pos] == 1), pos + 1


def _dec_acquire(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    lock, pos = w.read_str8(buf, pos)
    (count,) = w.I16.unpack_from(buf, pos)
    func, pos = w.read_str8(buf, pos + 2)
    name, pos = w.read_str8(buf, pos)
    return Acquire(lock, count, func, name), pos


def _dec_release(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    lock, pos = w.read_str8(buf, pos)
    func, pos = w.read_str8(buf, pos)
    name, pos = w.read_str8(buf, pos)
    return Release(lock, func, name), pos


def _dec_extension(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    return Extension(bytes(buf[pos:])), len(buf)


def _dec_data(buf: bytes | memoryview, pos: int) -> tuple[Packet, int]:
    end = len(buf)
    return Data(bytes(buf[pos:end])), end


_EMPTY: tuple[type[Packet], ...] = (
    Noop, GrabJob, NoJob, Ping, Pong, Sleep, Unknown, Status, Success, Dump, Shutdown,
    NoWorker, JobAssigned, JobUnassigned,
)  # fmt: skip

_DECODER_TABLE: dict[Cmd, _Decoder] = {
    Cmd.SCHED_LATER: _dec_sched_later,
    Cmd.WORK_DONE: _dec_handle_rest(WorkDone),
    Cmd.WORK_FAIL: _dec_handle(WorkFail),
    Cmd.JOB_ASSIGN: _dec_job(JobAssign),
    Cmd.CAN_DO: _dec_func(CanDo),
    Cmd.CANT_DO: _dec_func(CantDo),
    Cmd.SUBMIT_JOB: _dec_job(SubmitJob),
    Cmd.DROP_FUNC: _dec_func(DropFunc),
    Cmd.REMOVE_JOB: _dec_handle(RemoveJob),
    Cmd.LOAD: _dec_load,
    Cmd.BROADCAST: _dec_func(Broadcast),
    Cmd.CONFIG_GET: _dec_config_get,
    Cmd.CONFIG_SET: _dec_config_set,
    Cmd.CONFIG: _dec_config,
    Cmd.RUN_JOB: _dec_job(RunJob),
    Cmd.ACQUIRED: _dec_acquired,
    Cmd.ACQUIRE: _dec_acquire,
    Cmd.RELEASE: _dec_release,
    Cmd.DATA: _dec_data,
    Cmd.RECV_DATA: _dec_job(RecvData),
    Cmd.WORK_DATA: _dec_handle_rest(WorkData),
    Cmd.EXTENSION: _dec_extension,
}

_DECODER_TABLE.update({cls.cmd: _dec_constant(cls()) for cls in _EMPTY})  # type: ignore[call-arg]

#: Indexed by command code: the shared packet of a command without fields
#: (None for the others), so that a frame with an empty payload skips the
#: decoder table.
EMPTY_PACKETS: list[Packet | None] = [None] * (max(Cmd) + 1)
for _cls in _EMPTY:
    EMPTY_PACKETS[_cls.cmd] = _DECODER_TABLE[_cls.cmd](b"", 0)[0]

#: Indexed by command code; a list lookup is the cheapest dispatch available.
#: Codes between the reference's last one and ours are invalid.
#: (A KeyError here at import time means a command has no decoder.)
_DECODERS: list[_Decoder | None] = [
    _DECODER_TABLE[Cmd(code)] if code in Cmd._value2member_map_ else None
    for code in range(max(Cmd) + 1)
]


def decode_at(cmd: int, buf: bytes | memoryview, pos: int) -> Packet:
    """Decode the payload of command ``cmd`` found at ``buf[pos:]`` (all of it).

    Internal entry point shared with :func:`frames.decode_body`, which passes
    the whole frame body and ``pos=5`` to avoid slicing the payload out.
    """
    decoder = _DECODERS[cmd] if 0 <= cmd < len(_DECODERS) else None
    if decoder is None:
        raise RemoteProtocolError(f"unknown command {cmd}")
    try:
        packet, end = decoder(buf, pos)
    except w.SHORT:
        raise RemoteProtocolError(
            f"truncated {Cmd(cmd).name} payload ({len(buf) - pos} bytes)"
        ) from None
    if end != len(buf):
        raise RemoteProtocolError(f"{len(buf) - end} trailing bytes after {Cmd(cmd).name}")
    return packet


def decode_packet(cmd: int, payload: bytes | memoryview) -> Packet:
    """Decode ``payload`` (the bytes after the command byte) as command ``cmd``.

    The payload must be consumed exactly. Raises :class:`RemoteProtocolError`
    for unknown commands (35–63, 65 and up), short payloads and trailing bytes.
    """
    return decode_at(cmd, payload, 0)
