"""The dashboard's Failed view in a real browser: it lists the failed set with
each function's retry policy, and its buttons retry and purge failed jobs."""

from __future__ import annotations

import time

import test_browser
import trio
from cdp import Browser
from test_browser import ARTIFACTS, TEST_TIMEOUT, eventually, start_server

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import RetryPolicy

#: The browser fixtures of test_browser (skipped without Chromium, except in CI).
chromium = test_browser.chromium
browser = test_browser.browser


async def test_dashboard_lists_failed_jobs_and_retries_one(browser: Browser) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with trio.open_nursery() as nursery:
            running = await start_server(nursery)
            core = running.core
            core.set_policy(b"mail", RetryPolicy(2, "exponential", 3, 60, False))
            w = core.connect(is_worker=True)
            core.can_do(w, b"mail")
            now = time.time()
            for name in (b"first", b"second"):
                core.submit(Job(b"mail", name), now)
                for at in (now, now + 100):  # two attempts, two failures
                    core.add_slot(w, 1)
                    core.tick(at)
                    core.work_fail(w, b"mail", name, at)
            core.cant_do(w, b"mail")
            assert [f.job.name for f in core.failed_jobs()] == [b"first", b"second"]
            await running.server.http._commit()

            page = await browser.new_page(ARTIFACTS)
            await page.goto(f"{running.http}/dashboard")
            row = "document.querySelector('#failed tr[data-job=first]')"
            await page.wait_for(f"!!{row}", 15, "failed rows")
            assert (
                await page.evaluate(f"{row}.querySelector('[data-col=attempts]').textContent")
                == "2"
            )
            assert (
                await page.evaluate(f"{row}.querySelector('[data-col=how]').textContent") == "fail"
            )
            policy = await page.evaluate(
                "document.querySelector('#failed tr[data-failed-func=mail] [data-col=policy]')"
                ".textContent"
            )
            assert policy == "at most 2 attempts; backoff exponential from 3 s, at most 60 s"
            assert (
                await page.evaluate("document.querySelector('#failed-count').textContent") == "(2)"
            )
            await page.screenshot("dashboard-failed")

            # Retry: asked first, then the job is pending again and leaves the view.
            await page.click('#failed tr[data-job="first"] button[data-action="retry"]')
            await page.wait_for("document.querySelector('#confirm').open", 5, "confirmation")
            assert "Retry job “first” of “mail” now?" in await page.evaluate(
                "document.querySelector('#confirm-text').textContent"
            )
            await page.click("#confirm-ok")
            await eventually(lambda: core.entry(b"mail", b"first") is not None, 5, "retried")
            assert [f.job.name for f in core.failed_jobs()] == [b"second"]
            await page.wait_for(f"!{row}", 5, "row gone")

            # Purge the other: the view says there is nothing left.
            await page.click('#failed tr[data-job="second"] button[data-action="purge"]')
            await page.wait_for("document.querySelector('#confirm').open", 5, "confirmation")
            await page.click("#confirm-ok")
            await eventually(lambda: core.failed == {}, 5, "purged")
            await page.wait_for(
                "document.querySelector('#failed tbody').textContent === 'No failed jobs.'",
                5,
                "empty view",
            )
            assert page.errors() == []
            nursery.cancel_scope.cancel()
