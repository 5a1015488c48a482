"""The command table: decoded request → one scheduler call → reply.

Each handler parses nothing (the protocol package did) and holds no business
logic (the scheduler core does): it calls the core and says what to answer.
A handler returns the reply frame, or None when the command has no immediate
reply (RUN_JOB, JOB_ASSIGNED, SHUTDOWN, server-only codes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import Cmd
from trio_periodic.protocol.frames import encode_raw_frame
from trio_periodic.protocol.job import encode_job_list
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.state import ConnState
from trio_periodic.server.auth import Identity, visible_funcs
from trio_periodic.server.ops.base import OpContext, describe_worker
from trio_periodic.server.ops.table import handle_request

#: Commands a client-role connection may send (PROTOCOL.md §13.3).
CLIENT_COMMANDS = frozenset(
    {
        Cmd.PING,
        Cmd.SUBMIT_JOB,
        Cmd.STATUS,
        Cmd.DROP_FUNC,
        Cmd.REMOVE_JOB,
        Cmd.DUMP,
        Cmd.LOAD,
        Cmd.SHUTDOWN,
        Cmd.CONFIG_GET,
        Cmd.CONFIG_SET,
        Cmd.RUN_JOB,
        Cmd.RECV_DATA,
        Cmd.EXTENSION,
    }
)
#: Codes only the server sends: decoded, then ignored without a reply.
SERVER_ONLY = frozenset(
    {
        Cmd.NOOP,
        Cmd.JOB_ASSIGN,
        Cmd.NO_JOB,
        Cmd.PONG,
        Cmd.SUCCESS,
        Cmd.CONFIG,
        Cmd.ACQUIRED,
        Cmd.NO_WORKER,
        Cmd.DATA,
    }
)


class CommandContext(Protocol):
    """What a handler may use of the connection that received the command."""

    core: Scheduler
    #: With an auth file: the identity of the command (STATUS filters by it).
    identity: Identity | None

    @property
    def state(self) -> ConnState:
        """The connection's scheduler state (after registration)."""
        ...

    def arm_after_flush(self, msgid: int) -> None:
        """Open a grab slot once the reply to ``msgid`` is on the wire."""

    def request_shutdown(self) -> None:
        """SHUTDOWN: ask the server to stop."""

    def keepalive_changed(self) -> None:
        """CONFIG_SET keepalive: re-time every connection's idle wait."""


Handler = Callable[[CommandContext, int, Any, float], bytes | None]
CommandTable = Mapping[type, Handler]


def _success(msgid: int) -> bytes:
    return encode_raw_frame(msgid, Cmd.SUCCESS)


def _no_worker(msgid: int) -> bytes:
    return encode_raw_frame(msgid, Cmd.NO_WORKER)


def ping(c: CommandContext, msgid: int, pkt: p.Ping, now: float) -> bytes:
    return encode_raw_frame(msgid, Cmd.PONG)


def unknown(c: CommandContext, msgid: int, pkt: p.Unknown, now: float) -> bytes:
    return encode_raw_frame(msgid, Cmd.UNKNOWN)


def sleep(c: CommandContext, msgid: int, pkt: p.Sleep, now: float) -> bytes:
    return encode_raw_frame(msgid, Cmd.NOOP)


def submit_job(c: CommandContext, msgid: int, pkt: p.SubmitJob, now: float) -> bytes:
    c.core.submit(pkt.job, now)
    return _success(msgid)


def run_job(c: CommandContext, msgid: int, pkt: p.RunJob, now: float) -> bytes | None:
    if not c.core.run_job(c.state, msgid, pkt.job, now):
        return _no_worker(msgid)
    return None


def recv_data(c: CommandContext, msgid: int, pkt: p.RecvData, now: float) -> bytes:
    if not c.core.recv_data(c.state, msgid, pkt.job, now):
        return _no_worker(msgid)
    return _success(msgid)


def status(c: CommandContext, msgid: int, pkt: p.Status, now: float) -> bytes:
    funcs = visible_funcs(c.identity)
    return encode_raw_frame(msgid, Cmd.DATA, c.core.status(now, funcs))


def drop_func(c: CommandContext, msgid: int, pkt: p.DropFunc, now: float) -> bytes:
    c.core.drop_func(pkt.func)
    return _success(msgid)


def remove_job(c: CommandContext, msgid: int, pkt: p.RemoveJob, now: float) -> bytes:
    c.core.remove_job(pkt.func, pkt.name)
    return _success(msgid)


def dump(c: CommandContext, msgid: int, pkt: p.Dump, now: float) -> bytes:
    return encode_raw_frame(msgid, Cmd.DATA, encode_job_list(c.core.iter_jobs()))


def load(c: CommandContext, msgid: int, pkt: p.Load, now: float) -> bytes:
    c.core.load(pkt.jobs, now)
    return _success(msgid)


def shutdown(c: CommandContext, msgid: int, pkt: p.Shutdown, now: float) -> None:
    c.request_shutdown()
    return None


def config_get(c: CommandContext, msgid: int, pkt: p.ConfigGet, now: float) -> bytes:
    value = c.core.config_get(pkt.key.decode("latin-1"))
    return encode_raw_frame(msgid, Cmd.CONFIG, value.to_bytes(4, "big"))


def config_set(c: CommandContext, msgid: int, pkt: p.ConfigSet, now: float) -> bytes:
    key = pkt.key.decode("latin-1")
    c.core.config_set(key, pkt.value)
    if key == "keepalive":
        c.keepalive_changed()
    return _success(msgid)


def can_do(c: CommandContext, msgid: int, pkt: p.CanDo, now: float) -> bytes:
    c.core.can_do(c.state, pkt.func)
    return _success(msgid)


def broadcast(c: CommandContext, msgid: int, pkt: p.Broadcast, now: float) -> bytes:
    c.core.can_do(c.state, pkt.func, broadcast=True)
    return _success(msgid)


def cant_do(c: CommandContext, msgid: int, pkt: p.CantDo, now: float) -> bytes:
    c.core.cant_do(c.state, pkt.func)
    return _success(msgid)


def grab_job(c: CommandContext, msgid: int, pkt: p.GrabJob, now: float) -> bytes:
    # The slot is armed only after this SUCCESS is on the wire, so that the
    # assignment never shares a write with the reply (CLIENTS.md §10).
    if c.core.grab_wanted(c.state, msgid):
        c.arm_after_flush(msgid)
    return _success(msgid)


def job_assigned(c: CommandContext, msgid: int, pkt: p.JobAssigned, now: float) -> None:
    c.core.job_assigned(c.state, msgid, now)
    return None


def job_unassigned(c: CommandContext, msgid: int, pkt: p.JobUnassigned, now: float) -> None:
    c.core.job_unassigned(c.state, msgid, now)
    return None


def work_done(c: CommandContext, msgid: int, pkt: p.WorkDone, now: float) -> bytes:
    c.core.work_done(c.state, pkt.func, pkt.name, pkt.data)
    return _success(msgid)


def work_fail(c: CommandContext, msgid: int, pkt: p.WorkFail, now: float) -> bytes:
    c.core.work_fail(c.state, pkt.func, pkt.name, now)
    return _success(msgid)


def sched_later(c: CommandContext, msgid: int, pkt: p.SchedLater, now: float) -> bytes:
    c.core.sched_later(c.state, pkt.func, pkt.name, pkt.delay, pkt.step, now)
    return _success(msgid)


def work_data(c: CommandContext, msgid: int, pkt: p.WorkData, now: float) -> bytes:
    c.core.work_data(pkt.func, pkt.name, pkt.data, c.state, now)
    return _success(msgid)


def acquire(c: CommandContext, msgid: int, pkt: p.Acquire, now: float) -> bytes:
    ok = c.core.acquire(pkt.lock, pkt.count, pkt.func, pkt.name)
    return encode_raw_frame(msgid, Cmd.ACQUIRED, b"\x01" if ok else b"\x00")


def release(c: CommandContext, msgid: int, pkt: p.Release, now: float) -> bytes:
    c.core.release(pkt.lock, pkt.func, pkt.name, now)
    return _success(msgid)


def extension(c: CommandContext, msgid: int, pkt: p.Extension, now: float) -> bytes:
    """Ours, not the reference's: one operation of ``server/ops`` (JSON in, JSON out)."""
    ctx = OpContext(c.core, now, c.identity, describe_worker, c.state)
    return encode_raw_frame(msgid, Cmd.EXTENSION, handle_request(ctx, pkt.body))


def ignore(c: CommandContext, msgid: int, pkt: Any, now: float) -> None:
    return None


COMMANDS: dict[type, Handler] = {
    p.Ping: ping,
    p.Unknown: unknown,
    p.Sleep: sleep,
    p.SubmitJob: submit_job,
    p.RunJob: run_job,
    p.RecvData: recv_data,
    p.Status: status,
    p.DropFunc: drop_func,
    p.RemoveJob: remove_job,
    p.Dump: dump,
    p.Load: load,
    p.Shutdown: shutdown,
    p.ConfigGet: config_get,
    p.ConfigSet: config_set,
    p.CanDo: can_do,
    p.Broadcast: broadcast,
    p.CantDo: cant_do,
    p.GrabJob: grab_job,
    p.JobAssigned: job_assigned,
    p.JobUnassigned: job_unassigned,
    p.WorkDone: work_done,
    p.WorkFail: work_fail,
    p.SchedLater: sched_later,
    p.WorkData: work_data,
    p.Acquire: acquire,
    p.Release: release,
    p.Extension: extension,
}
for _cls in p.PACKET_TYPES.values():
    if _cls.cmd in SERVER_ONLY:
        COMMANDS[_cls] = ignore
