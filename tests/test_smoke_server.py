"""Real sockets, in-process server: the basic round trip on TCP and Unix sockets."""

from __future__ import annotations

from rawclient import RawConn

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.job import Job


async def test_submit_work_done_over_tcp_and_unix(server) -> None:  # type: ignore[no-untyped-def]
    worker = await RawConn.open(server.unix, ClientType.WORKER)
    client = await RawConn.open(server.tcp)
    assert isinstance(await worker.request(1, p.CanDo(b"f")), p.Success)
    assert isinstance(await worker.request(2, p.GrabJob()), p.Success)
    assert isinstance(await client.request(5, p.SubmitJob(Job(b"f", b"a", b"hi"))), p.Success)
    assign = await worker.recv_for(2)
    assert isinstance(assign.packet, p.JobAssign)
    assert assign.packet.job.workload == b"hi"
    await worker.send_many(
        [(2, p.JobAssigned()), (7, p.WorkDone(b"f", b"a", b"ok")), (2, p.GrabJob())]
    )
    assert isinstance((await worker.recv_for(7)).packet, p.Success)
    status = await client.request(8, p.Status())
    assert isinstance(status, p.Data)
    assert status.data.startswith(b"f,1,0,0,0,")
