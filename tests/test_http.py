"""The HTTP API over real sockets: the seed's curl interface, bridge routes, metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio
from rawclient import RawConn

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType
from trio_periodic.server.app import Server
from trio_periodic.store.memory import MemoryStore


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[Server, int, int]]:
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], http="127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(srv.run)
        tcp_port = int(bound[0].rsplit(":", 1)[1])
        http_port = int(bound[-1].rsplit(":", 1)[1])
        assert bound[-1].startswith("http://")
        yield srv, tcp_port, http_port
        nursery.cancel_scope.cancel()


async def http(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One HTTP/1.1 request with Connection: close; returns (status, body)."""
    hdrs = {"Host": "x", "Connection": "close", "Content-Length": str(len(body)), **(headers or {})}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(head.encode() + b"\r\n" + body)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), payload


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_seed_curl_interface(http_server: tuple[Server, int, int]) -> None:
    srv, _, port = http_server
    assert await http(port, "GET", "/") == (200, b"{}")
    status, body = await http(port, "POST", "/", b"func=ls5&name=%2Ftmp%2F&args=hi&timeout=9", FORM)
    assert (status, json.loads(body)) == (200, {"msg": "SUCCESS"})
    status, body = await http(port, "POST", "/ls5", b"name=b&sched_at=4000000000", FORM)
    assert status == 200
    [job_a, job_b] = sorted(srv.core.dump(), key=lambda j: j.name)
    assert (job_a.name, job_a.workload, job_a.timeout) == (b"/tmp/", b"hi", 9)
    assert job_b.sched_at == 4000000000
    status, body = await http(port, "GET", "/")
    stats = json.loads(body)["ls5"]
    assert stats["total_job"] == 2 and stats["total_worker"] == 0 and stats["processing"] == 0
    status, body = await http(port, "GET", "/ls5?ignored=1")  # a query is not part of the name
    assert json.loads(body)["func_name"] == "ls5"
    assert await http(port, "GET", "/nope") == (200, b"{}")
    assert (await http(port, "POST", "/ls5", b"name=b&act=remove", FORM))[0] == 200
    assert (await http(port, "POST", "/ls5", b"name=b&act=remove", FORM))[0] == 404
    assert (await http(port, "POST", "/", b"name=x", FORM))[0] == 400
    assert (await http(port, "POST", "/f", b"name=x&timeout=soon", FORM))[0] == 400
    assert (await http(port, "DELETE", "/ls5"))[0] == 200
    assert srv.core.dump() == [] and await http(port, "GET", "/") == (200, b"{}")


async def test_drop_refused_while_a_worker_has_the_func(
    http_server: tuple[Server, int, int],
) -> None:
    _, tcp_port, port = http_server
    worker = await RawConn.open(("127.0.0.1", tcp_port), ClientType.WORKER)
    await worker.request(1, p.CanDo(b"busy"))
    assert (await http(port, "DELETE", "/busy"))[0] == 409
    assert (await http(port, "DELETE", "/"))[0] == 400


async def test_curl_on_the_protocol_port(http_server: tuple[Server, int, int]) -> None:
    srv, tcp_port, _ = http_server
    status, body = await http(tcp_port, "POST", "/f", b"name=a", FORM)
    assert status == 200 and json.loads(body) == {"msg": "SUCCESS"}
    assert [j.name for j in srv.core.dump()] == [b"a"]
    # and the same port still speaks the binary protocol
    client = await RawConn.open(("127.0.0.1", tcp_port))
    assert isinstance(await client.request(1, p.Ping()), p.Pong)


async def test_bridge_routes_and_run(http_server: tuple[Server, int, int]) -> None:
    srv, tcp_port, port = http_server
    assert (await http(port, "POST", "/periodic/submit/f/a/?timeout=5", b"w"))[0] == 204
    status, text = await http(port, "GET", "/periodic/status/")
    assert status == 200 and text.startswith(b"f,0,1,0,0,")
    assert (await http(port, "POST", "/periodic/run/f/b/", b"x"))[0] == 500  # no worker
    worker = await RawConn.open(("127.0.0.1", tcp_port), ClientType.WORKER)
    await worker.request(1, p.CanDo(b"echo"))
    await worker.request(2, p.GrabJob())

    async def work() -> None:
        assign = await worker.recv_for(2)
        assert isinstance(assign.packet, p.JobAssign)
        job = assign.packet.job
        await worker.send_many(
            [(2, p.JobAssigned()), (3, p.WorkDone(job.func, job.name, job.workload[::-1]))]
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(work)
        assert await http(port, "POST", "/periodic/run/echo/j/", b"abc") == (200, b"cba")
    assert (await http(port, "POST", "/periodic/remove/f/a/"))[0] == 204
    assert (await http(port, "POST", "/periodic/drop/f/"))[0] == 204
    assert b"f," not in srv.core.status(0)


async def test_metrics_and_dashboard(http_server: tuple[Server, int, int]) -> None:
    _, _, port = http_server
    await http(port, "POST", "/m", b"name=a", FORM)
    status, body = await http(port, "GET", "/metrics")
    assert status == 200
    assert b'periodic_jobs{func="m"} 1' in body
    assert b"periodic_jobs_submitted_total 1" in body
    status, body = await http(port, "GET", "/api/status")
    assert json.loads(body)[0]["func"] == "m"
    status, body = await http(port, "GET", "/dashboard")
    assert status == 200 and b"/api/events" in body
    assert (await http(port, "GET", "/periodic.js"))[0] == 200
    assert (await http(port, "PUT", "/m"))[0] == 405
