"""Schedules through every door: the ops layer, the client library on a real
socket, the HTTP routes, the CLI, and a restart of a server on SQLite."""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path

import pytest
import trio
from conftest import RunningServer
from test_cli_e2e import periodic
from test_http import http, http_server  # noqa: F401 - fixture

from trio_periodic.client import Client
from trio_periodic.client.errors import ExtensionError
from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.server.app import Server
from trio_periodic.server.auth import Identity
from trio_periodic.server.ops.base import OpContext, describe_worker
from trio_periodic.server.ops.table import handle_request
from trio_periodic.store.base import PutSchedule
from trio_periodic.store.sqlite import SqliteStore

NOW = 1_780_308_030.0  # 2026-06-01T10:00:30Z


def ask(core: Scheduler, request: object, identity: Identity | None = None) -> dict:  # type: ignore[type-arg]
    ctx = OpContext(core, NOW, identity, describe_worker)
    answer: dict = json.loads(handle_request(ctx, json.dumps(request).encode()))  # type: ignore[type-arg]
    return answer


def test_add_list_remove_and_refusals() -> None:
    core = Scheduler()
    added = ask(
        core,
        {"op": "schedule_add", "func": "f", "name": "s", "cron": "30 2 * * *",
         "tz": "Europe/Paris", "workload": "hi", "timeout": 9, "overlap": "queue"},
    )  # fmt: skip
    assert added["ok"], added
    r = added["result"]
    assert (r["func"], r["name"], r["cron"], r["tz"], r["overlap"], r["catch_up"]) == (
        "f", "s", "30 2 * * *", "Europe/Paris", "queue", "none",
    )  # fmt: skip
    assert r["next_run_local"] == "2026-06-02T02:30:00+02:00"
    assert r["last_run"] is None and (r["fired"], r["skipped"]) == (0, 0)
    [change] = core.take_changes()
    assert isinstance(change, PutSchedule) and change.row.workload == b"hi"
    listed = ask(core, {"op": "schedule_list"})["result"]
    assert [(s["func"], s["name"]) for s in listed] == [("f", "s")]
    for bad, message in [
        ({"cron": "61 * * * *"}, "bad cron expression"),
        ({"cron": "* * * * *", "tz": "Atlantis/Capital"}, "unknown time zone"),
        ({"cron": "* * * * *", "overlap": "both"}, "overlap must be"),
        ({"cron": "* * * * *", "catch_up": "some"}, "catch-up must be"),
        ({"cron": "* * * * *", "timeout": "soon"}, "timeout must be"),
        ({}, "cron is required"),
    ]:
        answer = ask(core, {"op": "schedule_add", "func": "f", "name": "x", **bad})
        assert (answer["ok"], answer["status"]) == (False, 400), bad
        assert message in answer["error"] and "\n" not in answer["error"]
    assert len(ask(core, {"op": "schedule_list"})["result"]) == 1
    assert ask(core, {"op": "schedule_remove", "func": "f", "name": "s"})["ok"]
    gone = ask(core, {"op": "schedule_remove", "func": "f", "name": "s"})
    assert (gone["ok"], gone["status"]) == (False, 404)


def test_a_non_admin_identity_sees_and_changes_only_its_functions() -> None:
    core = Scheduler()
    for func in ("mine", "theirs"):
        ask(core, {"op": "schedule_add", "func": func, "name": "s", "cron": "* * * * *"})
    me = Identity("client", b"c", b"t", frozenset({b"mine"}))
    listed = ask(core, {"op": "schedule_list"}, me)["result"]
    assert [s["func"] for s in listed] == ["mine"]
    refused = ask(
        core, {"op": "schedule_add", "func": "theirs", "name": "x", "cron": "* * * * *"}, me
    )
    assert refused["status"] == 403
    assert ask(core, {"op": "schedule_remove", "func": "theirs", "name": "s"}, me)["status"] == 403
    assert ask(core, {"op": "schedule_remove", "func": "mine", "name": "s"}, me)["ok"]
    assert len(core.schedules) == 1


async def test_the_client_library_over_a_real_socket(server: RunningServer) -> None:
    async with Client.connect(server.tcp_url) as client:
        s = await client.schedule_add("f", "every", "* * * * *", workload=b"\x00x", timeout=3)
        now = time.time()
        assert now < s["next_run"] <= math.floor(now / 60) * 60 + 60
        assert s["next_run"] % 60 == 0 and s["next_run_local"].endswith("+00:00")
        [listed] = await client.schedule_list()
        assert (listed["func"], listed["name"], listed["timeout"]) == ("f", "every", 3)
        assert await client.schedule_list("other") == []
        with pytest.raises(ExtensionError, match="unknown time zone") as info:
            await client.schedule_add("f", "x", "* * * * *", tz="Nowhere/Here")
        assert info.value.status == 400
        await client.schedule_remove("f", "every")
        with pytest.raises(ExtensionError) as info:
            await client.schedule_remove("f", "every")
        assert info.value.status == 404
        assert await client.ping() >= 0


async def test_http_routes_and_metrics(http_server: tuple[Server, int, int]) -> None:  # noqa: F811
    srv, _, port = http_server
    body = json.dumps({"cron": "0 * * * *", "tz": "America/New_York", "catch_up": "last"})
    status, answer = await http(port, "PUT", "/api/schedules/f/hourly", body.encode())
    assert status == 200, answer
    assert json.loads(answer)["next_run_local"].endswith(("-04:00", "-05:00"))
    status, answer = await http(port, "GET", "/api/schedules")
    assert status == 200
    [s] = json.loads(answer)
    assert (s["func"], s["name"], s["catch_up"]) == ("f", "hourly", "last")
    status, answer = await http(port, "PUT", "/api/schedules/f/bad", b'{"cron": "0 0 31 2 *"}')
    assert status == 400 and "bad cron expression" in json.loads(answer)["err"]
    assert (await http(port, "PUT", "/api/schedules/f/bad", b"[1]"))[0] == 400
    assert (await http(port, "POST", "/api/schedules/f/bad", b"{}"))[0] == 405
    # Fire it by hand (the pure core) and read the counters on /metrics.
    entry = srv.core.schedules.entries[(b"f", b"hourly")]
    srv.core.tick(entry.next_tick)
    status, metrics = await http(port, "GET", "/metrics")
    assert 'periodic_schedule_fires_total{func="f",name="hourly"} 1' in metrics.decode()
    assert 'periodic_schedule_skipped_total{func="f",name="hourly"} 0' in metrics.decode()
    assert (await http(port, "DELETE", "/api/schedules/f/hourly"))[0] == 200
    assert (await http(port, "DELETE", "/api/schedules/f/hourly"))[0] == 404
    assert json.loads((await http(port, "GET", "/api/schedules"))[1]) == []


async def test_schedules_survive_a_restart_on_sqlite_and_catch_up(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    for round_ in range(2):
        srv = Server(SqliteStore(path), ["tcp://127.0.0.1:0"])
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(srv.run)
            async with Client.connect(bound[0]) as client:
                if round_ == 0:
                    await client.schedule_add("f", "s", "*/5 * * * *", tz="Europe/Paris")
                    await client.schedule_add("f", "c", "* * * * *", catch_up="last")
                    assert [r.jobs for r in await client.status()] == []
                else:
                    listed = {s["name"]: s for s in await client.schedule_list()}
                    s = listed["s"]
                    assert (s["cron"], s["tz"]) == ("*/5 * * * *", "Europe/Paris")
                    # The server was "down" for an hour: "c" catches its last tick up.
                    with trio.fail_after(10):
                        while not await client.status():
                            await trio.sleep(0.02)
                    [row] = await client.status()
                    assert (row.func, row.jobs) == ("f", 1)
                    c = {s["name"]: s for s in await client.schedule_list()}["c"]
                    assert c["fired"] == 1 and c["last_run"] % 60 == 0
            nursery.cancel_scope.cancel()
        if round_ == 0:
            # As if the server had been stopped an hour ago.
            conn = sqlite3.connect(path)
            with conn:
                conn.execute("UPDATE schedules SET last_tick = last_tick - 3600")
            conn.close()


def test_periodic_schedule_commands(daemon) -> None:  # type: ignore[no-untyped-def]
    url = daemon.url
    out = periodic("schedule", "add", "f", "nightly", "30 2 * * *", "--tz", "Europe/Paris",
                   "-w", "data", "--overlap", "queue", "--catch-up", "all", url=url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = periodic("schedule", "list", "--json", url=url)
    assert listed.returncode == 0, listed.stderr
    [s] = json.loads(listed.stdout)
    assert (s["func"], s["name"], s["overlap"], s["catch_up"], s["workload"]) == (
        "f", "nightly", "queue", "all", "data",
    )  # fmt: skip
    assert s["next_run_local"].endswith(("T02:30:00+01:00", "T02:30:00+02:00", "T03:00:00+02:00"))
    plain = periodic("schedule", "list", url=url)
    header, row = plain.stdout.splitlines()
    assert header.split()[:4] == ["FUNC", "NAME", "CRON", "TZ"]
    assert row.split()[:2] == ["f", "nightly"] and "Europe/Paris" in row
    bad = periodic("schedule", "add", "f", "x", "every day", url=url)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "5 fields" in bad.stderr
    zone = periodic("schedule", "add", "f", "x", "* * * * *", "--tz", "Mars/Base", url=url)
    assert zone.returncode == 1 and "unknown time zone" in zone.stderr
    assert periodic("schedule", "remove", "f", "nightly", url=url).returncode == 0
    missing = periodic("schedule", "remove", "f", "nightly", url=url)
    assert missing.returncode == 1 and "no schedule f/nightly" in missing.stderr
    assert json.loads(periodic("schedule", "list", "--json", url=url).stdout) == []


def test_explain_names_the_schedule_that_submits_the_job() -> None:
    core = Scheduler()
    ask(core, {"op": "schedule_add", "func": "f", "name": "s", "cron": "*/10 * * * *",
               "tz": "America/New_York"})  # fmt: skip
    core.tick(NOW + 570)  # 10:10Z: fired, no worker
    answer = ask(core, {"op": "explain", "func": "f", "name": "s"})["result"]
    assert answer["schedule"] == {
        "cron": "*/10 * * * *",
        "tz": "America/New_York",
        "next_run": NOW + 1170,
        "next_run_local": "2026-06-01T06:20:00-04:00",
    }
    assert answer["text"][-1] == (
        "Submitted by schedule */10 * * * * (America/New_York),"
        " next tick at 2026-06-01T06:20:00-04:00."
    )
    # A job of another name says nothing of schedules.
    core.submit(Job(b"f", b"other"), NOW)
    assert ask(core, {"op": "explain", "func": "f", "name": "other"})["result"]["schedule"] is None
