"""The dashboard's JSON API over real sockets: rows, job pages, workers, rates,
server-sent events, actions, and the auth rules on each."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from rawclient import RawConn
from test_http import http
from test_http_auth import ALICE, ROOT, basic

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.job import Job
from trio_periodic.server.app import Server
from trio_periodic.server.dashboard import jobs_view
from trio_periodic.store.memory import MemoryStore


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Server, int, int]]:
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], http="127.0.0.1:0")
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(srv.run)
        ports = [int(url.rsplit(":", 1)[1]) for url in bound]
        yield srv, ports[0], ports[-1]
        nursery.cancel_scope.cancel()


async def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> Any:
    status, body = await http(port, "GET", path, headers=headers)
    assert status == 200, (path, status, body)
    return json.loads(body)


async def busy_worker(port: int, func: bytes) -> tuple[RawConn, Job]:
    """A worker that takes one job of ``func`` and holds it."""
    worker = await RawConn.open(("127.0.0.1", port), ClientType.WORKER)
    assert await worker.request(1, p.CanDo(func)) == p.Success()
    assert await worker.request(2, p.GrabJob()) == p.Success()
    assign = await worker.recv_for(2)
    assert isinstance(assign.packet, p.JobAssign)
    await worker.send(2, p.JobAssigned())
    return worker, assign.packet.job


async def test_rows_pages_and_workers_match_the_core(served: tuple[Server, int, int]) -> None:
    srv, tcp_port, port = served
    now = time.time()
    core = srv.core
    for i in range(5):
        core.submit(Job(b"mail", b"due-%d" % i), now - 10)
    for i in range(3):
        core.submit(Job(b"mail", b"later-%d" % i, sched_at=int(now) + 3600 + i), now)
    core.submit(Job(b"sms", b"x\xff", timeout=7), now)
    await srv.http._commit()
    worker, held = await busy_worker(tcp_port, b"sms")

    with trio.fail_after(10):
        rows = await get_json(port, "/api/funcs")
    by_func = {row["func"]: row for row in rows}
    assert set(by_func) == {"mail", "sms"}
    mail = by_func["mail"]
    assert (mail["pending"], mail["scheduled"], mail["running"], mail["jobs"]) == (5, 3, 0, 8)
    assert mail["workers"] == 0 and mail["oldest_pending"] <= now
    assert mail["next_scheduled"] == int(now) + 3600
    sms = by_func["sms"]
    assert (sms["pending"], sms["scheduled"], sms["running"], sms["workers"]) == (0, 0, 1, 1)
    assert await get_json(port, "/api/funcs/mail") == mail

    # Pages: due jobs in due order, then the scheduled ones; state filters.
    page = await get_json(port, "/api/funcs/mail/jobs?limit=4")
    assert page["total"] == 8 and [j["name"] for j in page["jobs"]] == [
        "due-0",
        "due-1",
        "due-2",
        "due-3",
    ]
    page = await get_json(port, "/api/funcs/mail/jobs?offset=4&limit=4")
    assert [(j["name"], j["state"]) for j in page["jobs"]] == [
        ("due-4", "pending"),
        ("later-0", "scheduled"),
        ("later-1", "scheduled"),
        ("later-2", "scheduled"),
    ]
    page = await get_json(port, "/api/funcs/mail/jobs?state=scheduled&offset=1")
    assert page["total"] == 3 and [j["name"] for j in page["jobs"]] == ["later-1", "later-2"]
    assert (await get_json(port, "/api/funcs/mail/jobs?state=running"))["total"] == 0

    # The held job names its worker and for how long it has held it.
    page = await get_json(port, "/api/funcs/sms/jobs")
    [job] = page["jobs"]
    assert (job["name"], job["quoted"], job["state"]) == ("x\\xff", "x%FF", "running")
    assert job["timeout"] == 7 and held.name == b"x\xff"
    [holder] = job["held_by"]
    assert holder["worker"].startswith("127.0.0.1:") and holder["confirmed"] is True
    assert 0 <= holder["held_for"] < 10 and holder["deadline"] > holder["since"]

    [listed] = await get_json(port, "/api/workers")
    assert listed["address"] == holder["worker"] and listed["funcs"] == ["sms"]
    assert listed["held"] == 1 and listed["jobs"][0]["name"] == "x\\xff"

    overview = await get_json(port, "/api/overview?seconds=60")
    assert overview["funcs"] == rows
    assert overview["totals"]["submitted"] == 9 and overview["totals"]["assigned"] == 1
    assert len(overview["throughput"]["counts"]["done"]) == 60
    assert (await http(port, "GET", "/api/funcs/nope/jobs"))[0] == 404
    assert (await http(port, "GET", "/api/funcs/nope"))[0] == 404
    assert (await http(port, "GET", "/api/funcs/mail/jobs?state=odd"))[0] == 400
    assert (await http(port, "GET", "/api/funcs/mail/jobs?limit=x"))[0] == 400
    await worker.aclose()


async def test_actions_change_the_core(served: tuple[Server, int, int]) -> None:
    srv, tcp_port, port = served
    now = time.time()
    srv.core.submit(Job(b"f", b"soon", sched_at=int(now) + 3600), now)
    srv.core.submit(Job(b"f", b"gone"), now)
    srv.core.submit(Job(b"w", b"held"), now)
    await srv.http._commit()
    worker, _ = await busy_worker(tcp_port, b"w")

    with trio.fail_after(10):
        assert (await http(port, "POST", "/api/funcs/f/jobs/soon/run"))[0] == 200
    entry = srv.core.entry(b"f", b"soon")
    assert entry is not None and entry.run_at <= time.time() and entry.sched_at <= now + 1
    assert (await http(port, "POST", "/api/funcs/w/jobs/held/run"))[0] == 409
    assert (await http(port, "POST", "/api/funcs/f/jobs/nope/run"))[0] == 404
    assert (await http(port, "DELETE", "/api/funcs/f/jobs/gone"))[0] == 200
    assert srv.core.entry(b"f", b"gone") is None
    assert (await http(port, "DELETE", "/api/funcs/f/jobs/gone"))[0] == 404
    assert (await http(port, "GET", "/api/funcs/f/jobs/soon"))[0] == 405
    assert (await http(port, "DELETE", "/api/funcs/w"))[0] == 409  # it has a worker
    assert (await http(port, "DELETE", "/api/funcs/f"))[0] == 200
    assert b"f" not in srv.core.funcs
    assert (await http(port, "DELETE", "/api/funcs/f"))[0] == 404
    await worker.aclose()


async def test_server_sent_events_stream_the_overview(served: tuple[Server, int, int]) -> None:
    srv, _, port = served
    srv.core.submit(Job(b"f", b"a"), time.time())
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /api/events?seconds=30 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while data.count(b"event: overview") < 2:
            data += await stream.receive_some(65536)
        await stream.aclose()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"200" in head.split(b"\r\n")[0]
    assert b"text/event-stream" in head and b"Transfer-Encoding: chunked" in head
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    first = json.loads(events[0])
    assert first["funcs"][0]["func"] == "f" and first["funcs"][0]["pending"] == 1
    assert len(first["throughput"]["counts"]["submitted"]) == 30
    assert json.loads(events[1])["now"] > first["now"]


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[Server, int, int]]:
    rules = tmp_path / "auth.txt"
    rules.write_text(
        "client  alice  a-token  mail,sms\nworker  bob    b-token  mail\nadmin root r-token any\n"
    )
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], http="127.0.0.1:0", auth_file=str(rules))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(srv.run)
        ports = [int(url.rsplit(":", 1)[1]) for url in bound]
        yield srv, ports[0], ports[-1]
        nursery.cancel_scope.cancel()


async def test_every_view_and_action_follows_the_auth_rules(
    guarded: tuple[Server, int, int],
) -> None:
    srv, _, port = guarded
    now = time.time()
    for func in (b"mail", b"other"):
        srv.core.submit(Job(func, b"j"), now)
    with trio.fail_after(10):
        for path in ("/api/funcs", "/api/overview", "/api/workers", "/api/funcs/mail/jobs"):
            assert (await http(port, "GET", path))[0] == 401
            assert (await http(port, "GET", path, headers=basic("alice", "bad")))[0] == 401
        assert (await http(port, "GET", "/api/events"))[0] == 401
        assert [r["func"] for r in await get_json(port, "/api/funcs", ALICE)] == ["mail"]
        overview = await get_json(port, "/api/overview", ALICE)
        assert [r["func"] for r in overview["funcs"]] == ["mail"]
        assert [r["func"] for r in await get_json(port, "/api/funcs", ROOT)] == ["mail", "other"]
        assert (await http(port, "GET", "/api/funcs/other/jobs", headers=ALICE))[0] == 403
        assert (await http(port, "GET", "/api/funcs/other", headers=ALICE))[0] == 403
        for method, path in (
            ("DELETE", "/api/funcs/other/jobs/j"),
            ("POST", "/api/funcs/other/jobs/j/run"),
            ("DELETE", "/api/funcs/other"),
        ):
            assert (await http(port, method, path, headers=ALICE))[0] == 403
        assert srv.core.entry(b"other", b"j") is not None
        assert (await http(port, "DELETE", "/api/funcs/mail/jobs/j", headers=ALICE))[0] == 200
        assert (await http(port, "DELETE", "/api/funcs/other", headers=ROOT))[0] == 200
    assert srv.core.dump() == []


def test_a_page_never_lists_a_job_twice() -> None:
    """Paging through every state of a function lists each job exactly once."""
    from trio_periodic.scheduler.core import Scheduler

    core = Scheduler()
    now = 1_000_000.0
    worker = core.connect(is_worker=True)
    core.can_do(worker, b"f")
    for i in range(23):
        core.submit(Job(b"f", b"j%02d" % i, sched_at=int(now) + (i % 3) * 100), now)
    for msgid in range(4):
        core.add_slot(worker, msgid)
    core.dispatch(now)
    seen: list[str] = []
    offset = 0
    while True:
        page = jobs_view(core, b"f", now, lambda c: "w", offset=offset, limit=5)
        assert page is not None and page["total"] == 23
        if not page["jobs"]:
            break
        seen += [j["name"] for j in page["jobs"]]
        offset += 5
    assert sorted(seen) == [f"j{i:02d}" for i in range(23)]
    states = [j["state"] for j in jobs_view(core, b"f", now, str, limit=500)["jobs"]]  # type: ignore[index]
    assert states[:4] == ["running"] * 4 and states.count("scheduled") == 15
