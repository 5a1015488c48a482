"""``explain`` and the EXTENSION command that carries it: the pure facts, the
JSON operation layer with its rights, and every door (binary, HTTP, CLI)."""

from __future__ import annotations

import json
import re
import time

import pytest
import trio
from conftest import RunningServer
from test_cli_e2e import periodic
from test_http import http, http_server  # noqa: F401 - fixture

from trio_periodic.client import Client
from trio_periodic.client.errors import ExtensionError
from trio_periodic.protocol import Job
from trio_periodic.protocol.constants import Cmd
from trio_periodic.protocol.errors import RemoteProtocolError
from trio_periodic.protocol.packets import Extension, decode_packet, encode_payload
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.explain import explain
from trio_periodic.server.app import Server
from trio_periodic.server.auth import Identity
from trio_periodic.server.ops.base import OpContext, describe_worker
from trio_periodic.server.ops.table import handle_request

NOW = 1_800_000_000.0


def worker(core: Scheduler, func: bytes, slots: int = 1):  # type: ignore[no-untyped-def]
    conn = core.connect(is_worker=True)
    core.can_do(conn, func)
    for msgid in range(slots):
        core.add_slot(conn, msgid)
    return conn


# ------------------------------------------------------------------ the facts


def test_unknown_job_has_no_explanation() -> None:
    core = Scheduler()
    assert explain(core, b"f", b"nope", NOW) is None
    core.submit(Job(b"f", b"a"), NOW)
    assert explain(core, b"f", b"nope", NOW) is None


def test_a_job_not_due_yet_says_until_when() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"later", sched_at=int(NOW) + 600), NOW)
    ex = explain(core, b"f", b"later", NOW)
    assert ex is not None
    assert (ex.state, ex.run_at) == ("pending", NOW + 600)
    assert ex.reasons == ["not_due", "no_worker"]


def test_a_due_job_without_worker_and_with_busy_workers() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"a"), NOW)
    core.submit(Job(b"f", b"b"), NOW)
    assert explain(core, b"f", b"a", NOW).reasons == ["no_worker"]  # type: ignore[union-attr]
    busy = worker(core, b"f", slots=1)
    core.dispatch(NOW)  # a goes to the only slot
    ex = explain(core, b"f", b"b", NOW)
    assert ex is not None
    assert (ex.workers, ex.idle_workers) == (1, 0)
    assert ex.reasons == ["workers_busy"]
    held = explain(core, b"f", b"a", NOW)
    assert held is not None and held.state == "running"
    assert [(h.conn, h.since, h.deadline) for h in held.holders] == [
        (busy, NOW, NOW + core.config["timeout"])
    ]


def test_jobs_due_earlier_go_first() -> None:
    core = Scheduler()
    for i, name in enumerate((b"first", b"second", b"third")):
        core.submit(Job(b"f", name, sched_at=int(NOW) - 10 + i), NOW - 100)
    ex = explain(core, b"f", b"third", NOW)
    assert ex is not None
    assert ex.ahead == 2
    assert ex.reasons == ["no_worker", "jobs_ahead"]


def test_a_due_job_with_a_free_worker_is_being_handed_out() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"a"), NOW)
    worker(core, b"f")
    assert explain(core, b"f", b"a", NOW).reasons == ["dispatching"]  # type: ignore[union-attr]
    core.draining = True
    assert explain(core, b"f", b"a", NOW).reasons == ["draining"]  # type: ignore[union-attr]


def test_a_job_waiting_for_a_lock_names_it_and_its_holders() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"a"), NOW)
    core.submit(Job(b"f", b"b"), NOW)
    worker(core, b"f", slots=2)
    core.dispatch(NOW)
    assert core.acquire(b"L", 1, b"f", b"a")
    assert not core.acquire(b"L", 1, b"f", b"b")
    ex = explain(core, b"f", b"b", NOW)
    assert ex is not None
    assert (ex.state, ex.reasons) == ("locked", ["lock"])
    assert [(w.lock, w.capacity, w.holders) for w in ex.locks] == [(b"L", 1, ((b"f", b"a"),))]


# ------------------------------------------------------ the operation layer


def ask(core: Scheduler, request: object, identity: Identity | None = None) -> dict:  # type: ignore[type-arg]
    ctx = OpContext(core, NOW, identity, describe_worker)
    body = request if isinstance(request, bytes) else json.dumps(request).encode()
    answer: dict = json.loads(handle_request(ctx, body))  # type: ignore[type-arg]
    return answer


def test_bad_requests_get_a_reason_not_a_crash() -> None:
    core = Scheduler()
    assert ask(core, b"{not json")["status"] == 400
    assert ask(core, [1, 2])["status"] == 400
    assert ask(core, {"op": 3})["status"] == 400
    assert ask(core, {"op": "no-such-op"}) == {
        "ok": False,
        "status": 404,
        "error": "unknown operation 'no-such-op'",
    }
    assert ask(core, {"op": "explain", "func": "f"})["error"].startswith("name is required")
    assert ask(core, {"op": "explain", "func": "f" * 256, "name": "a"})["status"] == 400
    assert ask(core, {"op": "explain", "func": "f", "name": "a"})["status"] == 404
    assert ask(core, b"x" * 70_000)["status"] == 413


def test_explain_answers_in_json_and_in_words() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"later", sched_at=int(NOW) + 3600), NOW)
    answer = ask(core, {"op": "explain", "func": "f", "name": "later"})
    assert answer["ok"] is True
    result = answer["result"]
    assert (result["func"], result["name"], result["state"]) == ("f", "later", "pending")
    assert result["run_at"] == NOW + 3600
    # A local date-time with its UTC offset.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", result["run_at_local"])
    assert result["text"] == [
        f"Not due until {result['run_at_local']}.",
        "No worker is registered for f.",
    ]


def test_a_non_admin_identity_may_explain_only_its_functions() -> None:
    core = Scheduler()
    core.submit(Job(b"mine", b"a"), NOW)
    core.submit(Job(b"theirs", b"a"), NOW)
    client = Identity("client", b"c", b"t", frozenset({b"mine"}))
    assert ask(core, {"op": "explain", "func": "mine", "name": "a"}, client)["ok"]
    refused = ask(core, {"op": "explain", "func": "theirs", "name": "a"}, client)
    assert (refused["ok"], refused["status"]) == (False, 403)


# -------------------------------------------------------------- the wire


def test_extension_is_code_64_and_other_new_codes_stay_invalid() -> None:
    packet = Extension(b'{"op":"explain"}')
    assert packet.cmd == Cmd.EXTENSION == 64
    assert decode_packet(64, encode_payload(packet)) == packet
    for code in (35, 63, 65, 255):
        with pytest.raises(RemoteProtocolError, match="unknown command"):
            decode_packet(code, b"")


async def test_explain_over_a_real_socket(server: RunningServer) -> None:
    async with Client.connect(server.tcp_url) as client:
        await client.submit_job("f", "a", later=3600)
        answer = await client.explain("f", "a")
        assert (answer["state"], answer["reasons"]) == ("pending", ["not_due", "no_worker"])
        with pytest.raises(ExtensionError, match="no job f/zzz") as info:
            await client.explain("f", "zzz")
        assert info.value.status == 404
        # The connection is still good after a refusal.
        assert await client.ping() >= 0


async def test_explain_over_http(http_server: tuple[Server, int, int]) -> None:  # noqa: F811
    srv, _, port = http_server
    srv.core.submit(Job(b"f", b"a", sched_at=4_000_000_000), trio.current_time())
    status, body = await http(port, "GET", "/api/funcs/f/jobs/a/explain")
    assert status == 200
    assert json.loads(body)["reasons"] == ["not_due", "no_worker"]
    status, body = await http(port, "GET", "/api/funcs/f/jobs/zzz/explain")
    assert (status, json.loads(body)["err"]) == (404, "no job f/zzz")


def test_periodic_explain_prints_the_reason_and_fails_for_an_unknown_job(daemon) -> None:  # type: ignore[no-untyped-def]
    assert periodic("submit", "f", "a", "--later", "3600", url=daemon.url).returncode == 0
    out = periodic("explain", "f", "a", url=daemon.url)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "f/a: pending"
    assert lines[1].startswith("  Not due until ")
    assert lines[2] == "  No worker is registered for f."
    as_json = periodic("explain", "f", "a", "--json", url=daemon.url)
    assert json.loads(as_json.stdout)["state"] == "pending"
    missing = periodic("explain", "f", "zzz", url=daemon.url)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [missing.stderr.strip()]
    assert "no job f/zzz" in missing.stderr


def test_a_scheduled_job_before_its_first_tick_names_its_schedule() -> None:
    core = Scheduler()
    schedule = {"func": "rep", "name": "nightly", "cron": "30 2 * * *"}
    added = ask(core, {"op": "schedule_add", **schedule})
    assert added["ok"], added
    answer = ask(core, {"op": "explain", "func": "rep", "name": "nightly"})["result"]
    assert (answer["state"], answer["reasons"]) == ("scheduled", ["schedule_next"])
    tick = answer["schedule"]["next_run"]
    assert tick > NOW and time.gmtime(tick)[3:6] == (2, 30, 0)  # 02:30 UTC, the default zone
    assert answer["text"][0] == "No job yet: a schedule kept by the server submits it."
    assert answer["text"][1].startswith("Submitted by schedule 30 2 * * * (UTC), next tick at ")
    # Without the schedule there is nothing to explain.
    assert ask(core, {"op": "schedule_remove", "func": "rep", "name": "nightly"})["ok"]
    assert ask(core, {"op": "explain", "func": "rep", "name": "nightly"})["status"] == 404
