"""A raw worker thread and a polling helper for tests against periodicd subprocesses."""

from __future__ import annotations

import threading
import time

from test_durability import BlockingConn

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType


class RecordingWorker(threading.Thread):
    """A raw worker thread: confirms each job, records its name (``seen``) and
    when it came (``times``, monotonic seconds), reports it done unless ``hang``."""

    def __init__(self, port: int, func: bytes, slots: int = 8, hang: bool = False) -> None:
        super().__init__(daemon=True)
        self.conn = BlockingConn(port, ClientType.WORKER)
        self.conn.request(1, p.CanDo(func))
        self.seen: list[bytes] = []
        self.times: list[float] = []
        self.hang = hang
        self.stopped = False
        for msgid in range(100, 100 + slots):
            self.conn.send(msgid, p.GrabJob())
        self.conn.sock.settimeout(0.2)

    def run(self) -> None:
        msgid = 1000
        while not self.stopped:
            try:
                response = self.conn.recv()
            except TimeoutError:
                continue
            except OSError:
                return
            if not isinstance(response.packet, p.JobAssign):
                continue
            job = response.packet.job
            self.seen.append(job.name)
            self.times.append(time.monotonic())
            msgid += 1
            frames = [(response.msgid, p.JobAssigned())]
            if not self.hang:
                frames += [(msgid, p.WorkDone(job.func, job.name)), (response.msgid, p.GrabJob())]
            try:
                self.conn.sock.sendall(b"".join(self.conn.proto.send(m, pk) for m, pk in frames))
            except OSError:
                return

    def stop(self) -> None:
        self.stopped = True
        self.join(5)
        self.conn.close()


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
