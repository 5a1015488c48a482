"""Retry policies and the failed set through every door: the service on
MockClock, the operations with their rights, the client library over a real
socket, HTTP, /metrics and the ``periodic`` command line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import RunningServer
from test_cli_e2e import periodic
from test_http import http, http_server  # noqa: F401 - fixture
from test_http_auth import ALICE, ROOT
from test_scheduler_service import RecordingOutbox, add_worker, mock_clock, service  # noqa: F401

from trio_periodic.client import Client, Worker
from trio_periodic.client import Job as ClientJob
from trio_periodic.client.errors import ExtensionError
from trio_periodic.protocol import Job
from trio_periodic.protocol.packets import JobAssign
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import SchedulerService
from trio_periodic.server.app import Server
from trio_periodic.server.auth import Identity
from trio_periodic.server.ops.base import OpContext, describe_worker
from trio_periodic.server.ops.table import handle_request
from trio_periodic.store.base import RetryPolicy
from trio_periodic.store.memory import MemoryStore
from trio_periodic.store.sqlite import SqliteStore

NOW = 1_800_000_000.0


# ------------------------------------------------------- service, MockClock


async def next_assign(out: RecordingOutbox) -> tuple[float, int]:
    while True:
        at, msgid, packet = await out.next()
        if isinstance(packet, JobAssign):
            return at, msgid


async def test_exponential_backoff_then_failed_set_on_mock_clock(
    service: SchedulerService,  # noqa: F811
    mock_clock: trio.testing.MockClock,  # noqa: F811
) -> None:
    core = service.core
    core.set_policy(b"f", RetryPolicy(max_attempts=4, backoff="exponential", base=2, cap=5))
    w, out = add_worker(service, b"f")
    core.submit(Job(b"f", b"a"), service.clock.now())
    await service.settle()
    gaps = []
    for _ in range(4):
        _, msgid = await next_assign(out)
        await trio.sleep(0.3)  # the worker works a while, then fails
        t_fail = trio.current_time()
        core.job_assigned(w, msgid, service.clock.now())
        core.work_fail(w, b"f", b"a", service.clock.now())
        core.add_slot(w, msgid)
        await service.settle()
        gaps.append(t_fail)
    # Waits of 2, 4 and 5 (capped) seconds from each failure report.
    assert [round(b - a - 0.3, 3) for a, b in itertools.pairwise(gaps)] == [2, 4, 5]
    await trio.sleep(60)
    assert out.frames == []  # never assigned again
    assert [f.attempts for f in core.failed_jobs()] == [4]


async def test_heartbeats_keep_a_long_job_alive_on_mock_clock(
    service: SchedulerService,  # noqa: F811
    mock_clock: trio.testing.MockClock,  # noqa: F811
) -> None:
    core = service.core
    w, out = add_worker(service, b"f")
    core.submit(Job(b"f", b"long", timeout=5), service.clock.now())
    await service.settle()
    _, msgid = await next_assign(out)
    core.job_assigned(w, msgid, service.clock.now())
    for _ in range(10):  # 40 s of work on a 5 s timeout
        await trio.sleep(4)
        core.work_data(b"f", b"long", b"", w, service.clock.now())
        service.poke()
    entry = core.entry(b"f", b"long")
    assert entry is not None and entry.state.name == "RUNNING"
    await trio.sleep(5.01)  # silence: now it times out
    entry = core.entry(b"f", b"long")
    assert entry is not None and entry.state.name == "PENDING"


# ------------------------------------------------------- operations & rights


def ask(core: Scheduler, request: dict[str, object], identity: Identity | None = None) -> dict:  # type: ignore[type-arg]
    ctx = OpContext(core, NOW, identity, describe_worker)
    answer: dict = json.loads(handle_request(ctx, json.dumps(request).encode()))  # type: ignore[type-arg]
    return answer


def test_ops_validate_their_arguments() -> None:
    core = Scheduler()
    for bad in (
        {"max_attempts": -1},
        {"max_attempts": "3"},
        {"backoff": "linear"},
        {"base": -1},
        {"cap": "x"},
        {"jitter": 1},
    ):
        answer = ask(core, {"op": "retry_set", "func": "f", **bad})
        assert (answer["ok"], answer["status"]) == (False, 400), bad
    assert core.policies == {}
    assert ask(core, {"op": "failed_retry", "func": "f", "names": []})["status"] == 400
    missing = ask(core, {"op": "failed_retry", "func": "f", "names": ["zz"]})
    assert (missing["status"], missing["error"]) == (404, "not in the failed set: f/zz")


def test_retry_get_shows_limit_and_backoff_kind() -> None:
    core = Scheduler()
    assert ask(core, {"op": "retry_get", "func": "f"})["result"] == {"func": "f", "policy": None}
    set_ = ask(core, {"op": "retry_set", "func": "f", "max_attempts": 3, "backoff": "exponential"})
    assert set_["ok"]
    policy = ask(core, {"op": "retry_get", "func": "f"})["result"]["policy"]
    assert policy == {
        "max_attempts": 3, "backoff": "exponential", "base": 1.0, "cap": 0.0, "jitter": False,
    }  # fmt: skip
    assert ask(core, {"op": "retry_clear", "func": "f"})["result"]["cleared"] is True
    assert core.policies == {}


def fail_for_good(core: Scheduler, func: bytes, name: bytes, now: float) -> None:
    """Give ``func`` a one-attempt policy and fail job ``name`` once: it lands
    in the failed set."""
    core.set_policy(func, RetryPolicy(max_attempts=1))
    w = core.connect(is_worker=True)
    core.can_do(w, func)
    core.add_slot(w, 1)
    core.submit(Job(func, name), now)
    core.tick(now)
    core.work_fail(w, func, name, now)


def failed_core() -> Scheduler:
    core = Scheduler()
    for func in (b"mine", b"theirs"):
        fail_for_good(core, func, b"a", NOW)
    core.take_changes()
    return core


def test_a_non_admin_identity_touches_only_its_functions() -> None:
    core = failed_core()
    client = Identity("client", b"c", b"t", frozenset({b"mine"}))
    listed = ask(core, {"op": "failed_list"}, client)["result"]
    assert [(j["func"], j["name"]) for j in listed] == [("mine", "a")]
    for op, extra in (
        ("retry_set", {}),
        ("retry_get", {}),
        ("retry_clear", {}),
        ("failed_list", {}),
        ("failed_retry", {"names": ["a"]}),
        ("failed_purge", {}),
    ):
        refused = ask(core, {"op": op, "func": "theirs", **extra}, client)
        assert (refused["ok"], refused["status"]) == (False, 403), op
        assert ask(core, {"op": op, "func": "mine", **extra}, client)["ok"], op
    assert [f.job.func for f in core.failed_jobs()] == [b"theirs"]
    admin = Identity("admin", b"a", b"t", frozenset())
    assert len(ask(core, {"op": "failed_list"}, admin)["result"]) == 1


# ---------------------------------------------------- client library, socket


async def fail_once(url: str, func: str) -> None:
    """A real worker that takes one job of ``func``, sends data and fails it."""
    worker = Worker(url)
    called = trio.Event()

    @worker.func(func)
    async def failing(job: ClientJob) -> None:
        await job.data(b"partial output")
        called.set()
        raise RuntimeError("this job fails on purpose")

    async with trio.open_nursery() as nursery:
        await nursery.start(worker.work, 1)
        await called.wait()
        worker.stop()  # graceful: the failure is reported first


async def test_failed_set_over_a_real_socket(server: RunningServer) -> None:
    with trio.fail_after(20):
        async with Client.connect(server.tcp_url) as client:
            await client.retry_set("f", max_attempts=2, backoff="fixed", base=0.05)
            assert (await client.retry_get("f"))["max_attempts"] == 2  # type: ignore[index]
            await client.submit_job("f", "a", b"work")
            await fail_once(server.tcp_url, "f")
            await fail_once(server.tcp_url, "f")
            [failed] = await client.failed_list("f")
            assert (failed["func"], failed["name"], failed["attempts"]) == ("f", "a", 2)
            assert failed["how"] == "fail" and failed["last_data"] == "partial output"
            assert failed["worker"].startswith("127.0.0.1:")
            status = await client.status()
            assert [(s.func, s.jobs) for s in status] == [("f", 0)]
            explained = await client.explain("f", "a")
            assert explained["state"] == "failed"
            assert "In the failed set after 2 attempts" in explained["text"][0]
            assert await client.failed_retry("f", "a") == ["a"]
            assert await client.failed_list() == []
            with pytest.raises(ExtensionError) as info:
                await client.failed_retry("f", "a")
            assert info.value.status == 404
            await fail_once(server.tcp_url, "f")  # a fresh count: one failure, retried
            explained = await client.explain("f", "a")
            assert explained["failures"] == 1
            assert "retry 2 of 2" in " ".join(explained["text"])
            assert await client.failed_purge("f") == []
            assert await client.retry_clear("f") is True
            assert await client.retry_get("f") is None


async def test_heartbeat_reaches_no_subscriber(server: RunningServer) -> None:
    worker = Worker(server.tcp_url)

    @worker.func("f")
    async def beating(job: ClientJob) -> bytes:
        await job.heartbeat()
        await job.data(b"one")
        await job.heartbeat()
        return b"result"

    with trio.fail_after(20):
        async with Client.connect(server.tcp_url) as client, trio.open_nursery() as nursery:
            await nursery.start(worker.work, 1)
            async with client.stream_job("f", "a") as run:
                chunks = [chunk async for chunk in run]
                assert await run.result() == b"result"
            assert chunks == [b"one"]
            worker.stop()
            with pytest.raises(ExtensionError, match="does not hold f/a") as info:
                await client.extension("heartbeat", func="f", name="a")
            assert info.value.status == 409


async def test_failed_set_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    sock = str(tmp_path / "p.sock")
    with trio.fail_after(20):
        for round_ in range(2):
            srv = Server(SqliteStore(db), [f"unix://{sock}"])
            async with trio.open_nursery() as nursery:
                await nursery.start(srv.run)
                async with Client.connect(f"unix://{sock}") as client:
                    if round_ == 0:
                        await client.retry_set("f", max_attempts=2, base=0.05)
                        await client.submit_job("f", "a")
                        await client.submit_job("f", "b")
                        for _ in range(3):
                            await fail_once(f"unix://{sock}", "f")
                    else:
                        [a] = await client.failed_list()
                        # a failed, b failed, a failed again: a is out, b has
                        # one attempt left.
                        assert a["attempts"] == 2 and a["name"] == "a"
                        assert srv.core.attempts == {(b"f", b"b"): 1}
                        assert (await client.retry_get("f"))["max_attempts"] == 2  # type: ignore[index]
                nursery.cancel_scope.cancel()


# ------------------------------------------------------------------- HTTP


async def test_http_routes_and_metrics(http_server: tuple[Server, int, int]) -> None:  # noqa: F811
    srv, _, port = http_server
    body = json.dumps({"max_attempts": 1, "backoff": "exponential", "base": 3})
    status, answer = await http(port, "PUT", "/api/funcs/f/retry", body.encode())
    assert status == 200, answer
    assert json.loads(answer)["policy"]["backoff"] == "exponential"
    status, answer = await http(port, "GET", "/api/funcs/f/retry")
    assert json.loads(answer)["policy"]["max_attempts"] == 1
    status, _ = await http(port, "PUT", "/api/funcs/f/retry", b'{"backoff": "sometimes"}')
    assert status == 400
    core = srv.core
    w = core.connect(is_worker=True)
    core.can_do(w, b"f")
    now = srv.service.clock.now()
    for name in (b"a", b"b"):
        core.add_slot(w, 1)
        core.submit(Job(b"f", name), now)
        core.tick(now)
        core.work_fail(w, b"f", name, now)
    await srv.service.settle()
    status, answer = await http(port, "GET", "/api/failed?func=f")
    assert [j["name"] for j in json.loads(answer)] == ["a", "b"]
    status, answer = await http(port, "POST", "/api/failed/f/a/retry")
    assert (status, json.loads(answer)["retried"]) == (200, ["a"])
    assert core.entry(b"f", b"a") is not None
    status, _ = await http(port, "POST", "/api/failed/f/a/retry")
    assert status == 404
    status, answer = await http(port, "DELETE", "/api/failed/f/b")
    assert json.loads(answer)["purged"] == ["b"]
    status, answer = await http(port, "GET", "/metrics")
    text = answer.decode()
    assert 'periodic_failed_total{func="f"} 2' in text
    assert "# TYPE periodic_retries_total counter" in text
    status, _ = await http(port, "DELETE", "/api/funcs/f/retry")
    assert status == 200 and core.policies == {}


# -------------------------------------------------------------------- CLI


def test_periodic_retry_and_failed_commands(daemon) -> None:  # type: ignore[no-untyped-def]
    url = daemon.url
    ok = periodic("retry", "set", "f", "--max-attempts", "1", "--backoff", "exponential",
                  "--base", "2", "--cap", "60", "--jitter", url=url)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    got = periodic("retry", "get", "f", url=url)
    assert got.stdout.splitlines() == [
        "attempts: 1",
        "backoff: exponential 2 s·2^(n-1), at most 60 s, with jitter",
    ]
    as_json = json.loads(periodic("retry", "get", "f", "--json", url=url).stdout)
    assert as_json["policy"]["max_attempts"] == 1
    for name in ("a", "b", "c"):
        assert periodic("submit", "f", name, url=url).returncode == 0
        trio.run(fail_once, url, "f")
    listed = json.loads(periodic("failed", "list", "--json", url=url).stdout)
    assert [(j["func"], j["name"], j["attempts"]) for j in listed] == [
        ("f", "a", 1), ("f", "b", 1), ("f", "c", 1),
    ]  # fmt: skip
    plain = periodic("failed", "list", "f", url=url).stdout.splitlines()
    assert len(plain) == 3 and plain[0].startswith("f\ta\t1 attempts\tfail by 127.0.0.1:")
    assert periodic("failed", "retry", "f", "a", url=url).returncode == 0
    status = periodic("status", "--json", url=url)
    assert json.loads(status.stdout)[0]["jobs"] == 1  # only a is pending again
    missing = periodic("failed", "retry", "f", "zz", url=url)
    assert missing.returncode == 1 and "not in the failed set: f/zz" in missing.stderr
    assert periodic("failed", "retry", "f", url=url).returncode != 0  # no name
    assert periodic("failed", "purge", "f", "b", url=url).stdout.strip() == "purged 1"
    assert periodic("failed", "purge", "f", url=url).stdout.strip() == "purged 1"
    assert json.loads(periodic("failed", "list", "--json", url=url).stdout) == []
    assert periodic("retry", "clear", "f", url=url).returncode == 0
    assert "no policy set" in periodic("retry", "get", "f", url=url).stdout
    bad = periodic("retry", "set", "f", "--backoff", "linear", url=url)
    assert bad.returncode != 0


async def test_http_retry_routes_follow_the_identity(tmp_path: Path) -> None:
    rules = tmp_path / "auth.txt"
    rules.write_text("client alice a-token mail,sms\nadmin root r-token any\n")
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], http="127.0.0.1:0", auth_file=str(rules))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(srv.run)
        port = int(bound[-1].rsplit(":", 1)[1])
        core = srv.core
        now = srv.service.clock.now()
        for func in (b"mail", b"other"):
            fail_for_good(core, func, b"x", now)
        body = b'{"max_attempts": 3}'
        assert (await http(port, "PUT", "/api/funcs/other/retry", body, ALICE))[0] == 403
        assert (await http(port, "PUT", "/api/funcs/mail/retry", body, ALICE))[0] == 200
        assert core.policies[b"other"].max_attempts == 1
        assert core.policies[b"mail"].max_attempts == 3
        _, listed = await http(port, "GET", "/api/failed", b"", ALICE)
        assert [j["func"] for j in json.loads(listed)] == ["mail"]
        assert (await http(port, "GET", "/api/failed?func=other", b"", ALICE))[0] == 403
        assert (await http(port, "POST", "/api/failed/other/x/retry", b"", ALICE))[0] == 403
        assert (await http(port, "DELETE", "/api/failed/other", b"", ALICE))[0] == 403
        assert (await http(port, "DELETE", "/api/funcs/other/retry", b"", ALICE))[0] == 403
        _, metrics = await http(port, "GET", "/metrics", b"", ALICE)
        assert b'periodic_failed_total{func="mail"} 1' in metrics
        assert b'func="other"' not in metrics
        assert (await http(port, "DELETE", "/api/failed/other", b"", ROOT))[0] == 200
        assert core.failed_jobs([b"other"]) == []
        nursery.cancel_scope.cancel()
