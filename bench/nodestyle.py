"""A worker with node-periodic's wire habits (CLIENTS.md §9), for the bench and the tests.

node-periodic 1.6.1 is not on npm, so this imitates what it does on the wire:
Nagle left on (no TCP_NODELAY), four-character random msgids, ``work(n)``
slots that re-send GRAB_JOB the moment an idle slot's GRAB_JOB is
acknowledged, JOB_ASSIGNED sent at once when a job arrives (its own small
write), then WORK_DONE on a fresh msgid.  A server that leaves a request
with no reply unacknowledged until the kernel's delayed ACK (about 40 ms)
stalls such a worker: Nagle holds its WORK_DONE behind the unacknowledged
JOB_ASSIGNED.

``run_node_worker`` is bounded by a job count and a deadline, and never
answers a msgid it does not know (the real library crashes on one).
"""

from __future__ import annotations

import random
import socket
import string
import time
from dataclasses import dataclass
from typing import Any

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.connection import ClientConnection, Response
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.frames import Registration


def random_msgid(rng: random.Random) -> int:
    """Four random ASCII letters read as a big-endian u32, as node-periodic makes them."""
    return int.from_bytes("".join(rng.choices(string.ascii_letters, k=4)).encode(), "big")


@dataclass
class NodeWorkerResult:
    done: int
    seconds: float
    #: Job names received more than once (must stay 0).
    twice: int
    #: Replies on a msgid the worker never used (node-periodic would crash).
    unknown: int


def run_node_worker(
    host: str, port: int, func: bytes, total: int, slots: int = 4, deadline_s: float = 60.0
) -> NodeWorkerResult:
    rng = random.Random()
    sock = socket.create_connection((host, port), timeout=deadline_s)
    proto = ClientConnection(Registration(ClientType.WORKER))
    sock.sendall(proto.initiate())
    used: set[int] = set()

    def send(msgid: int, packet: p.Packet) -> None:
        used.add(msgid)
        sock.sendall(proto.send(msgid, packet))  # one small write per request, Nagle on

    send(random_msgid(rng), p.CanDo(func))
    slot_ids = {random_msgid(rng) for _ in range(slots)}
    for msgid in slot_ids:
        send(msgid, p.GrabJob())
    finishing: dict[int, int] = {}  # WORK_DONE msgid -> its slot
    busy: set[int] = set()
    seen: set[bytes] = set()
    done = twice = unknown = 0
    started = time.monotonic()
    end = started + deadline_s
    try:
        while done < total and time.monotonic() < end:
            data = sock.recv(65536)
            if not data:
                break
            proto.receive_data(data)
            for event in proto.next_events():
                if not isinstance(event, Response):
                    continue
                msgid, packet = event.msgid, event.packet
                if msgid not in used:
                    unknown += 1
                elif isinstance(packet, p.JobAssign):
                    busy.add(msgid)
                    send(msgid, p.JobAssigned())
                    name = packet.job.name
                    twice += name in seen
                    seen.add(name)
                    finish = random_msgid(rng)
                    finishing[finish] = msgid
                    send(finish, p.WorkDone(packet.job.func, name, b""))
                elif isinstance(packet, p.Success):
                    if msgid in finishing:
                        done += 1
                        slot = finishing.pop(msgid)
                        busy.discard(slot)
                        send(slot, p.GrabJob())
                    elif msgid in slot_ids and msgid not in busy:
                        send(msgid, p.GrabJob())  # an idle slot asks again at once
    finally:
        sock.close()
    return NodeWorkerResult(done, time.monotonic() - started, twice, unknown)


def role_node_worker(
    sync: Any, target: Any, func: bytes, total: int, slots: int, deadline_s: float
) -> Any:
    """A bench role (bench/loadgen.py): one node-style worker connection."""
    from bench.loadgen import RoleResult, _Clock

    sync.wait_go()
    clock = _Clock()
    result = run_node_worker(target.host, target.port, func, total, slots, deadline_s)
    out = RoleResult("workers", count=result.done)
    out.extra["twice"] = result.twice
    out.extra["unknown"] = result.unknown
    return clock.finish(out)
