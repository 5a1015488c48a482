"""periodic.js and the dashboard in a real browser (headless Chromium over DevTools).

Every test runs a server in this trio run (memory store, 127.0.0.1 only), a
tiny page server on other ports (other origins), and a browser that the
fixture always closes.  Screenshots go to ``test-artifacts/browser/``.

Without Chromium the tests are skipped, except under CI
(``TRIO_PERIODIC_REQUIRE_BROWSER=1``), where they fail.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from cdp import Browser, CdpError, Page, browser_or_skip, open_browser
from rawclient import RawConn

from trio_periodic.client.client import Client
from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.state import ELSEWHERE, LOCKED, PENDING, RUNNING
from trio_periodic.server.app import Server
from trio_periodic.store.memory import MemoryStore

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
#: Wall-clock limit of one test, browser start included (seconds).
TEST_TIMEOUT = 120

RULES = """\
admin   root   r-token  any
client  alice  a-token  mail
worker  bob    b-token  count,upper
"""


def basic(name: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()


ROOT = basic("root", "r-token")
ALICE = basic("alice", "a-token")


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def chromium() -> str:
    """The browser to run (a plain fixture, so that a skip reports its reason)."""
    return browser_or_skip()


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with open_browser(chromium) as b:
        yield b


@dataclass
class Pages:
    """A static page server: each port is an origin of its own."""

    pages: dict[str, str] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)

    async def serve(self, nursery: trio.Nursery) -> str:
        """Listen on one more port; return its origin."""
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        origin = f"http://127.0.0.1:{listener.socket.getsockname()[1]}"
        nursery.start_soon(trio.serve_listeners, self._handle, [listener])
        self.origins.append(origin)
        return origin

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    path = event.target.decode().split("?")[0]
                    body = self.pages.get(path, "not found").encode()
                    status = 200 if path in self.pages else 404
                    headers = [
                        ("Content-Type", "text/html; charset=utf-8"),
                        ("Content-Length", str(len(body))),
                    ]
                    out = conn.send(h11.Response(status_code=status, headers=headers))
                    out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                    await stream.send_all(out)
                elif isinstance(event, h11.EndOfMessage):
                    conn.start_next_cycle()
                else:
                    return
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()


@dataclass
class Running:
    server: Server
    tcp: int
    ws: str
    http: str
    nursery: trio.Nursery

    @property
    def core(self) -> Scheduler:
        return self.server.core


async def start_server(nursery: trio.Nursery, **kwargs: Any) -> Running:
    srv = Server(
        MemoryStore(),
        ["tcp://127.0.0.1:0", "ws://127.0.0.1:0"],
        http="127.0.0.1:0",
        **kwargs,
    )
    bound = await nursery.start(srv.run)
    tcp = int(next(u for u in bound if u.startswith("tcp://")).rsplit(":", 1)[1])
    ws = next(u for u in bound if u.startswith("ws://"))
    http = next(u for u in bound if u.startswith("http://"))
    return Running(srv, tcp, ws, http, nursery)


def worker_page(module: str, ws: str, opts: dict[str, Any] | None = None) -> str:
    """A page whose module script imports periodic.js from ``module`` and works."""
    return f"""<!doctype html><meta charset="utf-8"><title>browser worker</title>
<h1>worker</h1><pre id="out"></pre>
<script type="module">
import {{ Worker }} from {json.dumps(module)};
window.seen = {{}};
window.done = 0;
try {{
  const worker = new Worker({json.dumps(ws)}, {json.dumps(opts or {})});
  window.worker = worker;
  await worker.addFunc("upper", (job) => job.text().toUpperCase());
  await worker.addFunc("count", async (job) => {{
    window.seen[job.name] = (window.seen[job.name] ?? 0) + 1;
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 3));
    window.done += 1;
    return job.name;
  }});
  worker.work(8);
  await new Promise((resolve) => {{
    const check = () => worker.connected ? resolve() : setTimeout(check, 20);
    check();
  }});
  document.getElementById("out").textContent = "working";
  window.ready = true;
}} catch (err) {{
  window.failure = String(err?.stack ?? err);
}}
</script>"""


def client_page(module: str, ws: str, opts: dict[str, Any] | None = None) -> str:
    return f"""<!doctype html><meta charset="utf-8"><title>browser client</title>
<h1>client</h1>
<script type="module">
import * as periodic from {json.dumps(module)};
window.periodic = periodic;
try {{
  window.client = await periodic.Client.connect({json.dumps(ws)}, {json.dumps(opts or {})});
  window.ready = true;
}} catch (err) {{
  window.failure = String(err?.stack ?? err);
}}
</script>"""


async def open_ready(browser: Browser, url: str, name: str) -> Page:
    page = await browser.new_page(ARTIFACTS)
    await page.goto(url)
    ready = await page.wait_for("window.ready || window.failure", 20, f"{name} ready")
    assert ready is True, f"{name} failed: {ready}"
    return page


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{what} not reached within {timeout} s")


# ------------------------------------------------------------------ periodic.js


async def test_worker_and_client_pages_over_websocket(browser: Browser) -> None:
    """A worker page and a client page of another origin import /periodic.js and
    talk to each other through the server over ws://."""
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            pages = Pages()
            origin = await pages.serve(nursery)
            module = f"{running.http}/periodic.js"
            pages.pages["/worker.html"] = worker_page(module, running.ws)
            pages.pages["/client.html"] = client_page(module, running.ws)
            worker = await open_ready(browser, f"{origin}/worker.html", "worker page")
            client = await open_ready(browser, f"{origin}/client.html", "client page")

            result = await client.evaluate(
                "client.runJob('upper', 'r1', 'from a browser')"
                ".then((bytes) => new TextDecoder().decode(bytes))"
            )
            assert result == "FROM A BROWSER"
            await client.evaluate("client.submitJob('count', 'c1', 'x')")
            await worker.wait_for("window.seen['c1'] === 1", 10, "submitted job run")
            rows = await client.evaluate("client.status()")
            upper = next(r for r in rows if r["func"] == "upper")
            assert upper["workers"] == 1 and upper["jobs"] == 0
            # The server sees a WebSocket worker from the browser.
            [conn] = running.core.funcs[b"upper"].workers
            assert conn.sink.stream.peer.startswith("ws:127.0.0.1:")
            assert await client.evaluate("typeof periodic.PeriodicWorker") == "function"
            await worker.screenshot("worker-page")
            assert worker.errors() == [] and client.errors() == []
            nursery.cancel_scope.cancel()


async def test_hundreds_of_jobs_through_a_browser_worker(browser: Browser) -> None:
    """300 jobs, half from a browser client page and half from the Python client,
    are each run exactly once by a browser worker with 8 slots."""
    total = 300
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            pages = Pages()
            origin = await pages.serve(nursery)
            module = f"{running.http}/periodic.js"
            pages.pages["/worker.html"] = worker_page(module, running.ws)
            pages.pages["/client.html"] = client_page(module, running.ws)
            worker = await open_ready(browser, f"{origin}/worker.html", "worker page")
            client = await open_ready(browser, f"{origin}/client.html", "client page")

            half = total // 2
            await client.evaluate(
                f"Promise.all(Array.from({{length: {half}}}, (_, i) =>"
                " client.submitJob('count', `js-${i}`, `w${i}`)))"
            )
            async with Client.connect(f"tcp://127.0.0.1:{running.tcp}") as python:
                for i in range(total - half):
                    await python.submit_job("count", f"py-{i}", f"w{i}")

            core = running.core
            await eventually(
                lambda: core.counters["done"] >= total and not core.funcs[b"count"].jobs,
                60,
                f"{total} jobs done",
            )
            seen = await worker.evaluate("window.seen")
            expected = {f"js-{i}" for i in range(half)} | {f"py-{i}" for i in range(total - half)}
            assert set(seen) == expected
            assert [name for name, times in seen.items() if times != 1] == []
            assert await worker.evaluate("window.done") == total
            assert core.counters["done"] == total and core.counters["failed"] == 0
            assert core.counters["expired"] == 0
            assert worker.errors() == []
            nursery.cancel_scope.cancel()


async def test_cross_origin_rules(browser: Browser, tmp_path: Path) -> None:
    """Any origin imports the module; only --http-cors origins read the API (with a
    preflight for credentials); only --ws-origin origins open WebSockets; identities
    register as types 3/4."""
    rules = tmp_path / "auth.txt"
    rules.write_text(RULES)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            pages = Pages()
            allowed = await pages.serve(nursery)
            foreign = await pages.serve(nursery)
            running = await start_server(
                nursery, http_cors=[allowed], ws_origins=[allowed], auth_file=str(rules)
            )
            module = f"{running.http}/periodic.js"
            bob = {"name": "bob", "token": "b-token"}
            alice = {"name": "alice", "token": "a-token"}
            pages.pages["/worker.html"] = worker_page(module, running.ws, bob)
            pages.pages["/client.html"] = client_page(module, running.ws, alice)
            pages.pages["/blank.html"] = "<!doctype html><title>blank</title>"

            worker = await open_ready(browser, f"{allowed}/worker.html", "worker page")
            client = await open_ready(browser, f"{allowed}/client.html", "client page")
            # alice may only use "mail": running "upper" is refused, submitting to mail works.
            refused = await client.evaluate(
                "client.submitJob('upper', 'x', 'y').then(() => 'submitted', (e) => e.message)"
            )
            assert "NO_WORKER" in refused
            await client.evaluate("client.submitJob('mail', 'm1', 'hello')")
            assert running.core.entry(b"mail", b"m1") is not None
            conn = running.core.funcs[b"count"].workers[0]
            assert conn.sink.identity is not None and conn.sink.identity.name == b"bob"

            api = f"{running.http}/api/funcs"
            fetch = (
                "fetch({url}, {{method: {method}, headers: {{Authorization: {auth}}}}})"
                ".then((r) => r.status, (e) => 'blocked: ' + e.message)"
            )
            get_root = fetch.format(url=json.dumps(api), method='"GET"', auth=json.dumps(ROOT))
            assert await client.evaluate(get_root) == 200
            rows = await client.evaluate(
                f"fetch({json.dumps(api)}, {{headers: {{Authorization: {json.dumps(ALICE)}}}}})"
                ".then((r) => r.json())"
            )
            assert [row["func"] for row in rows] == ["mail"]
            delete = fetch.format(
                url=json.dumps(f"{running.http}/api/funcs/mail/jobs/m1"),
                method='"DELETE"',
                auth=json.dumps(ALICE),
            )
            assert await client.evaluate(delete) == 200  # preflighted: Authorization, DELETE
            assert running.core.entry(b"mail", b"m1") is None

            other = await browser.new_page(ARTIFACTS)
            await other.goto(f"{foreign}/blank.html")
            imported = await other.evaluate(
                f"import({json.dumps(module)}).then((m) => typeof m.Client)"
            )
            assert imported == "function"  # the module is for every origin
            blocked = await other.evaluate(get_root)
            assert str(blocked).startswith("blocked"), blocked
            connected = await other.evaluate(
                f"import({json.dumps(module)}).then((m) => m.Client.connect("
                f"{json.dumps(running.ws)}, {json.dumps(alice)}))"
                ".then(() => 'connected', (e) => e.message)"
            )
            assert connected.startswith("cannot register"), connected
            assert worker.errors() == [] and client.errors() == []
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ dashboard


def expected_rows(core: Scheduler, now: float) -> dict[str, dict[str, int]]:
    """Per function, what its dashboard row must say, counted from the jobs themselves."""
    rows = {}
    for func, fs in core.funcs.items():
        # Through core.entry(): a pending job is stored packed, the entry is a copy.
        entries = [core.entry(func, name) for name in fs.jobs]
        assert all(e is not None for e in entries)
        rows[func.decode()] = {
            "workers": len(fs.workers),
            "pending": sum(e.state is PENDING and e.run_at <= now for e in entries if e),
            "scheduled": sum(e.state is PENDING and e.run_at > now for e in entries if e),
            "running": sum(e.state in (RUNNING, ELSEWHERE) for e in entries if e),
            "locked": sum(e.state is LOCKED for e in entries if e),
        }
    return rows


DOM_ROWS = """[...document.querySelectorAll('#funcs tbody tr[data-func]')].map((tr) => {
  const row = {func: tr.dataset.func};
  for (const col of ['workers', 'pending', 'scheduled', 'running', 'locked', 'oldest'])
    row[col] = tr.querySelector(`[data-col="${col}"]`).textContent;
  return row;
})"""


async def hold_jobs(running: Running) -> list[RawConn]:
    """Workers over TCP: one holds a job of "report"; one holds a "locky" job under
    lock L while a second "locky" job waits for that lock."""
    address = ("127.0.0.1", running.tcp)
    holder = await RawConn.open(address, ClientType.AUTH_WORKER, b"root", b"r-token")
    assert await holder.request(1, p.CanDo(b"report")) == p.Success()
    assert await holder.request(2, p.GrabJob()) == p.Success()
    assigned = await holder.recv_for(2)
    assert isinstance(assigned.packet, p.JobAssign)
    await holder.send(2, p.JobAssigned())

    locker = await RawConn.open(address, ClientType.AUTH_WORKER, b"root", b"r-token")
    assert await locker.request(1, p.CanDo(b"locky")) == p.Success()
    for slot in (10, 11):
        assert await locker.request(slot, p.GrabJob()) == p.Success()
    jobs = []
    for slot in (10, 11):
        event = await locker.recv_for(slot)
        assert isinstance(event.packet, p.JobAssign)
        await locker.send(slot, p.JobAssigned())
        jobs.append(event.packet.job)
    replies = [
        await locker.request(20 + i, p.Acquire(b"L", 1, job.func, job.name))
        for i, job in enumerate(jobs)
    ]
    assert replies == [p.Acquired(True), p.Acquired(False)]
    return [holder, locker]


def peer_of(conn: RawConn) -> str:
    host, port = conn.stream.socket.getsockname()[:2]  # type: ignore[attr-defined]
    return f"{host}:{port}"


async def test_dashboard_shows_the_server_state(browser: Browser, tmp_path: Path) -> None:
    """Rows, a function's jobs, the workers and the rate chart match the server, and
    follow it live (server-sent events)."""
    rules = tmp_path / "auth.txt"
    rules.write_text(RULES)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, auth_file=str(rules))
            core = running.core
            now = time.time()
            for i in range(12):
                core.submit(Job(b"mail", b"due-%02d" % i, b"w"), now - 30)
            for i in range(4):
                core.submit(Job(b"mail", b"later-%d" % i, sched_at=int(now) + 3600 * (i + 1)), now)
            core.submit(Job(b"report", b"monthly", timeout=900), now)
            for name in (b"a", b"b"):
                core.submit(Job(b"locky", name), now)
            core.submit(Job(b"nightly", b"backup", sched_at=int(now) + 7200), now)
            await running.server.http._commit()
            workers = await hold_jobs(running)
            # Some throughput for the chart: jobs done by a browser worker.
            pages = Pages()
            origin = await pages.serve(nursery)
            pages.pages["/worker.html"] = worker_page(
                f"{running.http}/periodic.js", running.ws, {"name": "bob", "token": "b-token"}
            )
            worker = await open_ready(browser, f"{origin}/worker.html", "worker page")
            url = f"tcp://127.0.0.1:{running.tcp}"
            async with Client.connect(url, name="root", token="r-token") as python:
                for i in range(40):
                    await python.submit_job("count", f"c{i}")
            await eventually(lambda: core.counters["done"] >= 40, 30, "count jobs done")

            page = await browser.new_page(ARTIFACTS)
            await page.set_headers({"Authorization": ROOT})
            await page.goto(f"{running.http}/dashboard")
            await page.wait_for("document.body.dataset.source === 'sse'", 15, "live data")

            want = expected_rows(core, time.time())
            got = await page.wait_for(
                f"(() => {{ const rows = {DOM_ROWS};"
                f" return rows.length === {len(want)} && rows; }})()",
                10,
                "a row per function",
            )
            assert [row["func"] for row in got] == sorted(want)
            for row in got:
                numbers = {
                    k: int(row[k]) for k in ("workers", "pending", "scheduled", "running", "locked")
                }
                assert numbers == want[row["func"]], row
            mail = next(row for row in got if row["func"] == "mail")
            assert mail["oldest"].startswith("waiting ") and "s" in mail["oldest"]
            assert want["locky"] == {
                "workers": 1,
                "pending": 0,
                "scheduled": 0,
                "running": 1,
                "locked": 1,
            }

            # The rate chart: every submission and every done job is in the window.
            total = "document.querySelector('#legend [data-kind={}]')?.dataset.total"
            await page.wait_for(
                f"{total.format('submitted')} === '{core.counters['submitted']}'"
                f" && {total.format('done')} === '{core.counters['done']}'",
                10,
                "chart totals",
            )
            points = await page.evaluate(
                "document.querySelector('#chart polyline[data-kind=done]').getAttribute('points')"
                ".split(' ').length"
            )
            assert points == 300

            # Workers: addresses, functions, jobs held.
            dom_workers = await page.evaluate(
                "[...document.querySelectorAll('#workers tbody tr[data-worker]')].map((tr) => ({"
                " address: tr.querySelector('[data-col=address]').textContent,"
                " funcs: tr.querySelector('[data-col=funcs]').textContent,"
                " held: Number(tr.querySelector('[data-col=held]').textContent)}))"
            )
            holder, locker = workers
            by_address = {w["address"]: w for w in dom_workers}
            assert by_address[peer_of(holder)] == {
                "address": peer_of(holder),
                "funcs": "report",
                "held": 1,
            }
            assert by_address[peer_of(locker)]["held"] == 1  # the parked job is no longer held
            browser_worker = [a for a in by_address if a.startswith("ws:127.0.0.1:")]
            assert (
                len(browser_worker) == 1
                and by_address[browser_worker[0]]["funcs"] == "count, upper"
            )
            assert len(dom_workers) == 3

            # A function's jobs, paged: names, states, the holder and for how long.
            await page.click('#funcs tr[data-func="mail"] button[data-action="jobs"]')
            names = await page.wait_for(
                "(() => { const t = document.querySelector('#jobs'); const rows ="
                " [...t.querySelectorAll('tbody tr[data-job]')];"
                " return t.dataset.total === '16'"
                " && rows.map((r) => [r.dataset.job, r.dataset.state]); })()",
                10,
                "jobs of mail",
            )
            assert names == [[f"due-{i:02d}", "pending"] for i in range(12)] + [
                [f"later-{i}", "scheduled"] for i in range(4)
            ]
            await page.click('#funcs tr[data-func="report"] button[data-action="jobs"]')
            held = await page.wait_for(
                "(() => { const r = document.querySelector('#jobs tr[data-job=monthly]');"
                " return r && [...r.querySelectorAll('td')].slice(0, 7)"
                ".map((td) => td.textContent); })()",
                10,
                "the held job",
            )
            assert held[0] == "monthly" and held[1] == "running" and held[3] == "0"
            assert held[4] == "900 s" and held[5] == peer_of(holder)
            assert held[6].endswith(" s")
            await page.screenshot("dashboard-jobs")

            # Live: new jobs show up without a reload.
            for i in range(5):
                core.submit(Job(b"mail", b"new-%d" % i), time.time() - 1)
            await running.server.http._commit()
            await page.wait_for(
                "document.querySelector('#funcs tr[data-func=mail] [data-col=pending]')"
                ".textContent === '17'",
                10,
                "live update",
            )
            await page.click("#jobs-close")
            await page.screenshot("dashboard", full_page=True)
            assert page.errors() == [] and worker.errors() == []
            for conn in workers:
                await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_dashboard_actions_ask_first_and_follow_the_rules(
    browser: Browser, tmp_path: Path
) -> None:
    rules = tmp_path / "auth.txt"
    rules.write_text(RULES)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, auth_file=str(rules))
            core = running.core
            now = time.time()
            core.submit(Job(b"mail", b"old"), now)
            core.submit(Job(b"mail", b"soon", sched_at=int(now) + 3600), now)
            core.submit(Job(b"other", b"secret"), now)
            await running.server.http._commit()

            page = await browser.new_page(ARTIFACTS)
            await page.set_headers({"Authorization": ROOT})
            await page.goto(f"{running.http}/dashboard#func=mail")
            await page.wait_for("!!document.querySelector('#jobs tr[data-job=old]')", 15, "jobs")
            dialog_open = "document.querySelector('#confirm').open"

            # Remove: cancelled first, then confirmed.
            await page.click('#jobs tr[data-job="old"] button[data-action="remove"]')
            await page.wait_for(dialog_open, 5, "confirmation")
            assert "Remove job “old” of “mail”?" in await page.evaluate(
                "document.querySelector('#confirm-text').textContent"
            )
            await page.screenshot("dashboard-confirm")
            await page.click("#confirm-cancel")
            await page.wait_for(f"!{dialog_open}", 5, "dialog closed")
            await trio.sleep(0.3)
            assert core.entry(b"mail", b"old") is not None
            await page.click('#jobs tr[data-job="old"] button[data-action="remove"]')
            await page.wait_for(dialog_open, 5, "confirmation")
            await page.click("#confirm-ok")
            await eventually(lambda: core.entry(b"mail", b"old") is None, 5, "job removed")
            await page.wait_for("!document.querySelector('#jobs tr[data-job=old]')", 5, "row gone")
            assert (
                await page.evaluate("document.querySelector('#message').textContent")
                == "removed old"
            )

            # Why? The server's explanation, in words.
            await page.click('#jobs tr[data-job="soon"] button[data-action="explain"]')
            why = await page.wait_for(
                "(() => { const t = document.querySelector('#message').textContent;"
                " return t.startsWith('soon') && t; })()",
                5,
                "explanation",
            )
            assert why.startswith("soon (pending): Not due until ")
            assert why.endswith("No worker is registered for mail.")

            # Run now: the scheduled job becomes due.
            await page.click('#jobs tr[data-job="soon"] button[data-action="run"]')
            await page.wait_for(dialog_open, 5, "confirmation")
            await page.click("#confirm-ok")
            await eventually(
                lambda: (e := core.entry(b"mail", b"soon")) is not None and e.run_at <= time.time(),
                5,
                "job due now",
            )
            await page.wait_for(
                "document.querySelector('#jobs tr[data-job=soon]')?.dataset.state === 'pending'",
                5,
                "row pending",
            )

            # Drop: a function with no worker goes, with its jobs.
            await page.click('#funcs tr[data-func="other"] button[data-action="drop"]')
            await page.wait_for(dialog_open, 5, "confirmation")
            await page.click("#confirm-ok")
            await eventually(lambda: b"other" not in core.funcs, 5, "function dropped")
            await page.wait_for(
                "!document.querySelector('#funcs tr[data-func=other]')", 5, "row gone"
            )

            # A client identity sees only its functions and may not touch others.
            core.submit(Job(b"other", b"secret"), time.time())
            await running.server.http._commit()
            limited = await browser.new_page(ARTIFACTS)
            await limited.set_headers({"Authorization": ALICE})
            await limited.goto(f"{running.http}/dashboard")
            funcs = await limited.wait_for(
                "(() => { const r = [...document.querySelectorAll('#funcs tr[data-func]')];"
                " return r.length && r.map((tr) => tr.dataset.func); })()",
                15,
                "alice's rows",
            )
            assert funcs == ["mail"]
            status = await limited.evaluate(
                "fetch('/api/funcs/other', {method: 'DELETE'}).then((r) => r.status)"
            )
            assert status == 403 and b"other" in core.funcs
            # Without credentials there is nothing to see: the browser is asked for them
            # (401 with a Basic challenge), which a headless browser declines.
            anonymous = await browser.new_page(ARTIFACTS)
            with pytest.raises(CdpError, match="AUTH"):
                await anonymous.goto(f"{running.http}/dashboard")
            assert page.errors() == [] and limited.errors() == []
            nursery.cancel_scope.cancel()


async def test_dashboard_lists_schedules_and_removes_one(browser: Browser, tmp_path: Path) -> None:
    """A schedule added over HTTP shows up with its next run; its remove button
    asks first, then removes it."""
    from test_http import http

    rules = tmp_path / "auth.txt"
    rules.write_text(RULES)
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery, auth_file=str(rules))
            port = int(running.http.rsplit(":", 1)[1])
            page = await browser.new_page(ARTIFACTS)
            await page.set_headers({"Authorization": ROOT})
            await page.goto(f"{running.http}/dashboard")
            await page.wait_for(
                "document.querySelector('#schedules .empty')?.textContent === 'No schedules.'",
                10,
                "the empty schedules table",
            )
            body = json.dumps({"cron": "30 2 * * *", "tz": "Europe/Paris", "overlap": "queue"})
            status, answer = await http(
                port, "PUT", "/api/schedules/mail/nightly", body.encode(), {"Authorization": ROOT}
            )
            assert status == 200, answer
            want = json.loads(answer)
            row = await page.wait_for(
                "(() => { const tr ="
                " document.querySelector('#schedules tr[data-schedule=nightly]');"
                " return tr && Object.fromEntries([...tr.querySelectorAll('td[data-col]')]"
                ".map((td) => [td.dataset.col, td.textContent])); })()",
                10,
                "the schedule's row",
            )
            assert (row["func"], row["name"], row["cron"], row["tz"]) == (
                "mail", "nightly", "30 2 * * *", "Europe/Paris",
            )  # fmt: skip
            assert row["next"].startswith(want["next_run_local"] + " (in ")
            assert (row["last"], row["overlap"], row["fired"]) == ("never", "queue", "0")
            await page.screenshot("dashboard-schedules")
            await page.click('#schedules tr[data-schedule="nightly"] button')
            await page.wait_for("document.querySelector('#confirm').open", 5, "confirmation")
            assert "Remove schedule “nightly” of “mail”?" in await page.evaluate(
                "document.querySelector('#confirm-text').textContent"
            )
            await page.click("#confirm-ok")
            await eventually(lambda: not running.core.schedules.entries, 5, "schedule removed")
            await page.wait_for(
                "!document.querySelector('#schedules tr[data-schedule=nightly]')", 5, "row gone"
            )
            assert page.errors() == []
            nursery.cancel_scope.cancel()
