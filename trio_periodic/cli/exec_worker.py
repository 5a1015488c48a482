"""The command-line workers: every job runs a program.

* :func:`exec_job` - the seed README's ``periodic run -f FUNC --exec SCRIPT``:
  stdout marker lines decide (SEED.md §4, without its bugs);
* :func:`process_job` - ``periodic worker FUNC -- CMD`` like the reference
  ``periodic-run`` (CLIENTS.md §3): the exit status decides;
* :class:`RunnerPool` - ``periodic worker --pipe``: long-lived runner
  processes fed one job at a time over stdin (CLIENTS.md §4).

All three are worker functions for :class:`~trio_periodic.client.Worker`,
which does the protocol, the concurrency and the reconnecting.  SIGINT,
SIGTERM and SIGHUP stop gracefully (running jobs finish); a second signal
stops at once, killing the running processes.
"""

from __future__ import annotations

import logging
import math
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from trio_periodic.cli.invocation import ExecWorker, Globals, WorkerCmd
from trio_periodic.cli.process import (
    LineReader,
    SpawnError,
    run_child,
    spawn,
    stop_process,
    watch_memory,
)
from trio_periodic.client import Done, Fail, Job, SchedLater, Worker
from trio_periodic.client.job import Result

__all__ = ["ExecOutcome", "RunnerPool", "exec_job", "process_job", "run_worker"]

log = logging.getLogger("trio_periodic.cli")

#: Seconds before a runner that exited is started again.
RESTART_DELAY = 1.0


def _echo(line: bytes) -> None:
    out = sys.stdout.buffer
    out.write(line + b"\n")
    out.flush()


# ---------------------------------------------------------------- seed exec worker


@dataclass(slots=True)
class ExecOutcome:
    """What the marker lines of one run said."""

    fail: bool = False
    #: Seconds from the last SCHED_LATER line (None: done).
    later: int | None = None
    #: Why a marker line was unusable, if one was.
    bad: str | None = None

    def feed(self, line: bytes) -> bool:
        """Interpret ``line``; False if it is not a marker (the caller echoes it)."""
        parts = line.split(None, 1)
        word = parts[0] if parts else b""
        if word in (b"SCHED_LATER", b"SCHEDLATER"):
            arg = parts[1].strip() if len(parts) > 1 else b""
            try:
                delay = int(arg)
            except ValueError:
                delay = -1
            if delay < 0:
                marker = word.decode()
                self.bad = f"bad marker line {line.decode(errors='replace')!r}: expected {marker} N"
            else:
                self.later = delay
            return True
        if word == b"FAIL":
            self.fail = True
            return True
        if word == b"DONE":
            self.later = None
            return True
        return False

    def result(self) -> Result:
        if self.fail or self.bad is not None:
            return Fail()
        if self.later is not None:
            return SchedLater(self.later)
        return Done()


async def exec_job(argv: list[str], job: Job) -> Result:
    """Run ``argv + [job name]``; its exit status and marker lines decide the outcome."""
    outcome = ExecOutcome()

    async def on_line(line: bytes) -> None:
        if not outcome.feed(line):
            _echo(line)

    where = f"{job.func}/{job.name}"
    try:
        child = await run_child(
            [*argv, job.name], job.workload, time_limit=job.timeout, on_line=on_line
        )
    except SpawnError as exc:
        log.error("job %s: %s", where, exc)
        return Fail()
    if not child.ok:
        log.warning("job %s failed: %s %s", where, argv[0], child.describe())
        return Fail()
    if outcome.bad is not None:
        log.warning("job %s failed: %s", where, outcome.bad)
    return outcome.result()


# --------------------------------------------------------------- periodic-run worker


def _time_limit(cmd: WorkerCmd, job: Job) -> float | None:
    limit = job.timeout if cmd.timeout is None else cmd.timeout
    return limit or None


def _failure(cmd: WorkerCmd) -> Result:
    if cmd.skip_fail:
        return Done()
    if cmd.retry_secs > 0:
        return SchedLater(cmd.retry_secs)
    return Fail()


async def process_job(cmd: WorkerCmd, job: Job) -> Result:
    """One process per job; exit 0 → done, else the failure rules (CLIENTS.md §3)."""
    argv = [*cmd.command] if cmd.no_name else [*cmd.command, job.name]
    lines: list[bytes] = []
    result: bytes | None = None

    async def on_line(line: bytes) -> None:
        nonlocal result
        if cmd.work_data and result is None:
            marker = line[:8]
            if marker == b"WORKDATA":
                await job.data(line[9:])
                return
            if marker == b"WORKDONE":
                result = line[9:]
                return
        elif cmd.work_data:
            _echo(line)  # after WORKDONE: not part of the job any more
            return
        lines.append(line)

    capture = cmd.data or cmd.work_data
    where = f"{job.func}/{job.name}"
    try:
        child = await run_child(
            argv,
            job.workload,
            time_limit=_time_limit(cmd, job),
            on_line=on_line if capture else None,
            mem_limit=cmd.mem_limit,
        )
    except SpawnError as exc:
        log.error("job %s: %s", where, exc)
        return _failure(cmd)
    if not child.ok:
        log.warning("job %s failed: %s %s", where, argv[0], child.describe())
        return _failure(cmd)
    if result is not None:
        return Done(result)
    return Done(b"\n".join(lines) if capture else b"")


# ----------------------------------------------------------------- periodic-run-pipe


@dataclass(eq=False)
class Runner:
    """One long-lived runner process, restarted whenever it exits."""

    index: int
    argv: list[str]
    ready_timeout: float
    #: Kill (and restart) the runner when its RSS goes over this (bytes; 0: never).
    mem_limit: int = 0
    generation: int = 0
    alive: bool = False
    stdin: trio.abc.SendStream | None = None
    #: The job in flight: its line prefix and where its lines go.
    current: tuple[bytes, trio.MemorySendChannel[bytes]] | None = None
    _proc: trio.Process | None = None
    _kill: trio.CancelScope = field(default_factory=trio.CancelScope)

    async def supervise(self, idle: trio.MemorySendChannel[tuple[Runner, int]]) -> None:
        while True:
            with trio.CancelScope() as self._kill:
                await self._life(idle)
            await trio.sleep(RESTART_DELAY)

    async def _life(self, idle: trio.MemorySendChannel[tuple[Runner, int]]) -> None:
        try:
            proc = await spawn(self.argv, stdout=True)
        except SpawnError as exc:
            log.error("runner %d: %s", self.index, exc)
            return
        assert proc.stdout is not None
        reader = LineReader(proc.stdout)
        try:
            async with trio.open_nursery() as nursery:
                if self.mem_limit:
                    nursery.start_soon(watch_memory, proc.pid, self.mem_limit, self._over_memory)
                await self._serve(reader, proc, idle)
                nursery.cancel_scope.cancel()
        finally:
            self.alive = False
            if self.current is not None:
                self.current[1].close()
            await stop_process(proc)

    def _over_memory(self) -> None:
        log.warning("runner %d went over its memory limit; restarting", self.index)
        self.kill()

    async def _serve(
        self,
        reader: LineReader,
        proc: trio.Process,
        idle: trio.MemorySendChannel[tuple[Runner, int]],
    ) -> None:
        """Wait for the ready line, then route stdout lines to the job in flight."""
        with trio.move_on_after(self.ready_timeout or math.inf):
            ready = await reader.readline()
        if ready is None:
            log.warning("runner %d: not ready in time (or exited); restarting", self.index)
            return
        self.generation += 1
        self.stdin = proc.stdin
        self.alive = True
        idle.send_nowait((self, self.generation))
        while (line := await reader.readline()) is not None:
            job = self.current
            if job is not None and line.startswith(job[0]):
                job[1].send_nowait(line[len(job[0]) :])
            else:
                _echo(line)
        log.warning("runner %d exited; restarting", self.index)

    def kill(self) -> None:
        self.alive = False
        self._kill.cancel()

    async def run(self, payload: bytes, job: Job) -> Result | None:
        """Send one job; None if the runner died or said WORKFAIL."""
        job_id = secrets.randbits(32)
        prefix = b"%d " % job_id
        send, receive = trio.open_memory_channel[bytes](math.inf)
        self.current = (prefix, send)
        try:
            assert self.stdin is not None
            try:
                await self.stdin.send_all(prefix + payload + b"\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            async for rest in receive:
                marker = rest[:8]
                if marker == b"WORKDATA":
                    await job.data(rest[9:])
                elif marker == b"WORKDONE":
                    return Done(rest[9:])
                elif marker == b"WORKFAIL":
                    return None
                else:
                    return Done(rest)
            return None
        finally:
            self.current = None


class RunnerPool:
    """``--thread`` runners used round robin, one job at a time each."""

    def __init__(self, cmd: WorkerCmd) -> None:
        self.cmd = cmd
        self.runners = [
            Runner(i, list(cmd.command), float(cmd.ready_timeout), cmd.mem_limit)
            for i in range(cmd.thread)
        ]
        self._idle_send, self._idle = trio.open_memory_channel[tuple[Runner, int]](math.inf)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for runner in self.runners:
                nursery.start_soon(runner.supervise, self._idle_send)
            task_status.started()

    async def _acquire(self) -> Runner:
        while True:
            runner, generation = await self._idle.receive()
            if runner.alive and runner.generation == generation:
                return runner

    def _release(self, runner: Runner) -> None:
        if runner.alive:
            self._idle_send.send_nowait((runner, runner.generation))

    async def job(self, job: Job) -> Result:
        cmd = self.cmd
        payload = job.workload if cmd.no_name else job.wire.name
        runner: Runner | None = None
        outcome: Result | None = None
        with trio.move_on_after(_time_limit(cmd, job) or math.inf) as scope:
            runner = await self._acquire()
            try:
                outcome = await runner.run(payload, job)
            finally:
                self._release(runner)
        where = f"{job.func}/{job.name}"
        if scope.cancelled_caught:
            log.warning("job %s failed: time limit reached", where)
            if runner is not None:
                runner.kill()
        if outcome is None:
            if not scope.cancelled_caught:
                log.warning("job %s failed", where)
            return _failure(cmd)
        return outcome


# ------------------------------------------------------------------------------ main


async def _watch_signals(worker: Worker, cancel: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        stopping = False
        async for signum in signals:
            if stopping:
                log.warning("%s again: stopping now", signal.Signals(signum).name)
                cancel()
                return
            stopping = True
            log.warning(
                "%s: finishing running jobs (again to stop at once)", signal.Signals(signum).name
            )
            worker.stop()


async def run_worker(g: Globals, cmd: ExecWorker | WorkerCmd) -> int:
    """Run a command-line worker until it is stopped; return the exit status."""
    worker = Worker(
        g.url, name=g.client_name, token=g.client_token, ssl_context=g.ssl_context(), rsa=g.rsa
    )
    pool: RunnerPool | None = None
    if isinstance(cmd, ExecWorker):
        worker.add_func(cmd.func, partial(exec_job, cmd.command.split()))
        size = cmd.thread
        banner = "Worker started."
    elif cmd.pipe:
        pool = RunnerPool(cmd)
        worker.add_func(
            cmd.func,
            pool.job,
            broadcast=cmd.broadcast,
            lock=cmd.lock_name,
            lock_count=cmd.lock_count,
        )
        size = cmd.thread
        banner = "Pipe Worker started."
    else:
        worker.add_func(
            cmd.func,
            partial(process_job, cmd),
            broadcast=cmd.broadcast,
            lock=cmd.lock_name,
            lock_count=cmd.lock_count,
        )
        size = cmd.thread
        banner = "Worker started."

    async with trio.open_nursery() as nursery:

        async def work(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await worker.work(size, task_status=task_status)
            nursery.cancel_scope.cancel()

        nursery.start_soon(_watch_signals, worker, nursery.cancel_scope.cancel)
        if pool is not None:
            await nursery.start(pool.run)
        await nursery.start(work)
        print(banner, flush=True)
    return 0
