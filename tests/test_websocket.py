"""WebSocket transport: one binary message per Periodic frame, both directions."""

from __future__ import annotations

import trio
from trio_websocket import open_websocket_url

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.connection import ClientConnection, RegistrationReply, Response
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.frames import Registration
from trio_periodic.protocol.job import Job
from trio_periodic.server.app import Server
from trio_periodic.store.memory import MemoryStore


async def _next(ws, proto: ClientConnection) -> object:  # type: ignore[no-untyped-def]
    while True:
        events = proto.next_events()
        if events:
            assert len(events) == 1, "one frame per message"
            return events[0]
        proto.receive_data(await ws.get_message())


async def test_worker_and_client_over_websocket() -> None:
    srv = Server(MemoryStore(), ["ws://127.0.0.1:0/periodic"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(srv.run)
            assert url.startswith("ws://127.0.0.1:") and url.endswith("/periodic")
            async with open_websocket_url(url) as wws, open_websocket_url(url) as cws:
                wp = ClientConnection(Registration(ClientType.WORKER))
                cp = ClientConnection(Registration(ClientType.CLIENT))
                await wws.send_message(wp.initiate())
                await cws.send_message(cp.initiate())
                assert isinstance(await _next(wws, wp), RegistrationReply)
                assert isinstance(await _next(cws, cp), RegistrationReply)
                await wws.send_message(wp.send(1, p.CanDo(b"f")))
                assert await _next(wws, wp) == Response(1, p.Success())
                await wws.send_message(wp.send(2, p.GrabJob()))
                assert await _next(wws, wp) == Response(2, p.Success())
                await cws.send_message(cp.send(3, p.RunJob(Job(b"f", b"a", b"in"))))
                assign = await _next(wws, wp)
                assert isinstance(assign, Response) and isinstance(assign.packet, p.JobAssign)
                assert assign.msgid == 2 and assign.packet.job.workload == b"in"
                await wws.send_message(wp.send(2, p.JobAssigned()))
                await wws.send_message(wp.send(4, p.WorkDone(b"f", b"a", b"out")))
                assert await _next(wws, wp) == Response(4, p.Success())
                assert await _next(cws, cp) == Response(3, p.Data(b"out"))
            nursery.cancel_scope.cancel()
