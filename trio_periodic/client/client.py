"""The trio client: submit, run and stream jobs, inspect and administer a server.

::

    async with Client.connect("tcp://127.0.0.1:5000") as client:
        await client.submit_job("mail", "user-42", b"hello", later=60)
        result = await client.run_job("echo", "x", b"hi")
        for row in await client.status():
            print(row.func, row.jobs)

Every request shares the one connection (see :mod:`.connection`), so a client
may be used from many tasks at once.  Every request waits at most the
client's ``timeout`` for its reply; RUN_JOB and RECV_DATA wait as long as the
server keeps their subscription alive (the job's timeout, 60 s if 0) plus
:data:`RESULT_MARGIN`.
"""

from __future__ import annotations

import inspect
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self

import trio

from trio_periodic.client.connection import (
    DEFAULT_TIMEOUT,
    PING_INTERVAL,
    Connection,
    Subscription,
    expect_success,
)
from trio_periodic.client.errors import JobFailed, NoWorker, UnexpectedReply
from trio_periodic.client.extension import call_extension
from trio_periodic.client.job import decode_name, encode_name, to_bytes
from trio_periodic.client.transport import default_url
from trio_periodic.protocol import (
    ClientType,
    Config,
    ConfigGet,
    ConfigSet,
    Data,
    DropFunc,
    Dump,
    Load,
    Packet,
    ProtocolError,
    RecvData,
    Registration,
    RemoveJob,
    RunJob,
    Shutdown,
    Status,
    SubmitJob,
    decode_job_list,
    encode_job,
)
from trio_periodic.protocol import NoWorker as NoWorkerPacket
from trio_periodic.protocol.constants import DEFAULT_MAX_FRAME_SIZE
from trio_periodic.protocol.job import Job as WireJob
from trio_periodic.transport.rsa.options import RsaOptions

__all__ = [
    "EOF",
    "RESULT_MARGIN",
    "Client",
    "DataStream",
    "FuncStatus",
    "JobRun",
    "identity_registration",
    "parse_status",
]

#: The DATA payload that ends a RECV_DATA stream.
EOF = b"EOF"
#: RUN_JOB answers the server uses instead of a result.
FAILURE_RESULTS = {b"failed": "failed", b"expired": "expired", b"removed": "removed"}
#: Seconds the server keeps a RUN_JOB / RECV_DATA waiter when the job's timeout is 0.
SERVER_WAIT = 60
#: Seconds we wait beyond the server's own limit before giving up on a result.
RESULT_MARGIN = 5.0
#: A LOAD request carries at most this many bytes of jobs (progress granularity).
LOAD_BATCH_BYTES = 1024 * 1024

Name = str | bytes


def identity_registration(
    worker: bool, name: Name | None = None, token: Name | None = None
) -> Registration:
    """Registration type 1/2, or 3/4 with an identity (both or neither)."""
    if (name is None) != (token is None):
        raise ValueError("a client name and a client token must be given together")
    if name is None or token is None:
        return Registration(ClientType.WORKER if worker else ClientType.CLIENT)
    kind = ClientType.AUTH_WORKER if worker else ClientType.AUTH_CLIENT
    return Registration(kind, encode_name(name), encode_name(token))


@dataclass(frozen=True, slots=True)
class FuncStatus:
    """One line of STATUS: the state of one function."""

    func: str
    workers: int
    jobs: int
    processing: int
    locked: int
    #: Earliest ``sched_at`` of its pending jobs (the server's now if none), Unix seconds.
    sched_at: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_status(data: bytes) -> list[FuncStatus]:
    """Parse STATUS text (``func,workers,jobs,processing,locked,schedat`` lines)."""
    rows = []
    for line in data.split(b"\n"):
        if not line:
            continue
        # rsplit: a function name may itself contain commas.
        parts = line.rsplit(b",", 5)
        if len(parts) != 6:
            raise UnexpectedReply(f"bad STATUS line {line[:80]!r}")
        try:
            numbers = [int(p) for p in parts[1:]]
        except ValueError:
            raise UnexpectedReply(f"bad STATUS line {line[:80]!r}") from None
        rows.append(FuncStatus(decode_name(parts[0]), *numbers))
    return rows


def _check_result(func: Name, name: Name, result: bytes) -> bytes:
    reason = FAILURE_RESULTS.get(result)
    if reason is not None:
        raise JobFailed(_text(func), _text(name), reason)
    return result


def _text(value: Name) -> str:
    return decode_name(value) if isinstance(value, bytes) else value


def _result_wait(timeout: int) -> float:
    return (timeout if timeout > 0 else SERVER_WAIT) + RESULT_MARGIN


def _no_worker(func: Name) -> NoWorker:
    return NoWorker(f"no worker for function {_text(func)!r} (or the server refused the request)")


class Client:
    """A client connection.  Open one with :meth:`Client.connect`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str | None = None,
        *,
        name: Name | None = None,
        token: Name | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - the default wait of every request
        ping_interval: float = PING_INTERVAL,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        rsa: RsaOptions | None = None,
    ) -> AsyncIterator[Self]:
        """Connect to ``url`` (default: ``$PERIODIC_PORT`` or ``unix:///tmp/periodic.sock``).

        ``name``/``token`` register with an identity (type 3), for servers
        started with an auth file.  ``timeout`` bounds connecting and every
        request; ``ping_interval`` is the idle time before a keepalive PING.
        ``ssl_context`` serves ``tls://`` and ``wss://`` URLs (default: the
        system's CAs); ``TlsOptions(ca=..., cert=..., key=...).client_context()``
        builds one from PEM files.  ``rsa`` (``RsaOptions(private_path=...,
        public_path=..., mode=...)``) speaks periodicd's RSA transport on
        ``tcp://`` and ``unix://`` URLs.
        """
        registration = identity_registration(False, name, token)
        async with Connection.open(
            url or default_url(),
            registration,
            timeout=timeout,
            ping_interval=ping_interval,
            max_frame_size=max_frame_size,
            ssl_context=ssl_context,
            rsa=rsa,
        ) as conn:
            yield cls(conn)

    # ------------------------------------------------------------- basics

    async def ping(self) -> float:
        """PING the server; return the round trip in seconds."""
        return await self.conn.ping()

    async def submit_job(
        self,
        func: Name,
        name: Name,
        workload: bytes | str = b"",
        *,
        sched_at: int = 0,
        later: float | None = None,
        timeout: int = 0,  # noqa: ASYNC109 - `timeout` is the job's field, not a wait
        count: int = 0,
    ) -> None:
        """Submit (or replace) the job ``func/name``.

        ``sched_at`` is the earliest run time in Unix seconds (0 or the past:
        now); ``later`` is the same relative to now.  ``timeout`` is how long
        a worker may hold the job (0: the server's default).
        """
        if later is not None:
            sched_at = int(time.time() + later)
        func_b, name_b = encode_name(func), encode_name(name)
        job = WireJob(func_b, name_b, to_bytes(workload), sched_at, count, timeout)
        expect_success(await self.conn.request(SubmitJob(job)), "SUBMIT_JOB")

    async def remove_job(self, func: Name, name: Name) -> None:
        """Delete the job ``func/name`` (RUN_JOB callers get ``removed``)."""
        reply = await self.conn.request(RemoveJob(encode_name(func), encode_name(name)))
        expect_success(reply, "REMOVE_JOB")

    async def drop_func(self, func: Name) -> None:
        """Forget ``func`` and its jobs; the server ignores this while it has workers."""
        expect_success(await self.conn.request(DropFunc(encode_name(func))), "DROP_FUNC")

    async def status(self) -> list[FuncStatus]:
        """One :class:`FuncStatus` per function, sorted by name."""
        return parse_status(await self._data(Status(), "STATUS"))

    async def config_get(self, key: str) -> int:
        """A server setting (``timeout``, ``keepalive``, …; unknown keys read 0)."""
        reply = await self.conn.request(ConfigGet(key.encode("latin-1")))
        if isinstance(reply, Config):
            return reply.value
        expect_success(reply, "CONFIG_GET")
        raise UnexpectedReply("CONFIG_GET answered with SUCCESS")

    async def config_set(self, key: str, value: int) -> None:
        """Change a server setting (u32)."""
        reply = await self.conn.request(ConfigSet(key.encode("latin-1"), value))
        expect_success(reply, "CONFIG_SET")

    async def dump(self) -> bytes:
        """Every stored job as a job list (``i64 n`` + jobs) — what ``periodic dump`` writes."""
        return await self._data(Dump(), "DUMP", wait=max(self.conn.timeout, 60))

    async def load(
        self,
        jobs: bytes | Iterable[WireJob],
        *,
        progress: Callable[[int, int], object] | None = None,
    ) -> int:
        """Submit every job of a dump (bytes as :meth:`dump` returns, or jobs).

        Jobs go in LOAD requests of about a megabyte; ``progress(done, total)``
        is called after each.  Returns the number of jobs loaded.  Bytes that
        are not a job list raise :class:`ValueError`.
        """
        if isinstance(jobs, bytes | bytearray | memoryview):
            try:
                job_list = decode_job_list(bytes(jobs))
            except ProtocolError as exc:
                raise ValueError(f"not a Periodic dump: {exc}") from None
        else:
            job_list = list(jobs)
        total = len(job_list)
        done = 0
        batch: list[WireJob] = []
        size = 0
        for job in job_list:
            batch.append(job)
            size += len(encode_job(job))
            if size >= LOAD_BATCH_BYTES:
                done = await self._load_batch(batch, done, total, progress)
                batch, size = [], 0
        if batch or total == 0:
            done = await self._load_batch(batch, done, total, progress)
        return done

    async def _load_batch(
        self,
        batch: list[WireJob],
        done: int,
        total: int,
        progress: Callable[[int, int], object] | None,
    ) -> int:
        expect_success(await self.conn.request(Load(batch)), "LOAD")
        done += len(batch)
        if progress is not None:
            progress(done, total)
        return done

    async def shutdown(self, wait: float = 5.0) -> bool:
        """Ask the server to exit (SHUTDOWN has no reply).

        Returns True if the server closed the connection within ``wait`` seconds.
        """
        await self.conn.notify(Shutdown())
        with trio.move_on_after(wait):
            await self.conn.wait_closed()
            return True
        return False

    # ------------------------------------------------- beyond the reference

    async def extension(self, op: str, **args: Any) -> Any:
        """Run operation ``op`` (trio_periodic servers only; the reference server
        closes the connection).  Returns its result; :class:`ExtensionError`
        when the server refuses it."""
        return await call_extension(self.conn, op, args)

    async def explain(self, func: Name, name: Name) -> dict[str, Any]:
        """Why job ``func/name`` has not run: its state, reason codes and one
        sentence per reason under ``"text"``."""
        result: dict[str, Any] = await self.extension("explain", func=_text(func), name=_text(name))
        return result

    # Retry policies and the failed set (trio_periodic servers only).

    async def retry_set(
        self,
        func: Name,
        *,
        max_attempts: int = 0,
        backoff: str = "fixed",
        base: float = 1.0,
        cap: float = 0.0,
        jitter: bool = False,
    ) -> dict[str, Any]:
        """Give ``func`` a retry policy: at most ``max_attempts`` attempts (0: no
        limit), ``backoff`` ``fixed`` (``base`` s) or ``exponential`` (``base``·2^(n−1)
        s after the n-th failure, at most ``cap`` s when not 0), optional jitter."""
        result: dict[str, Any] = await self.extension(
            "retry_set", func=_text(func), max_attempts=max_attempts, backoff=backoff,
            base=base, cap=cap, jitter=jitter,
        )  # fmt: skip
        return result

    async def retry_get(self, func: Name) -> dict[str, Any] | None:
        """``func``'s retry policy (max_attempts, backoff, base, cap, jitter), or
        None: the reference behaviour (retry 1 s later, forever)."""
        result = await self.extension("retry_get", func=_text(func))
        policy: dict[str, Any] | None = result["policy"]
        return policy

    async def retry_clear(self, func: Name) -> bool:
        """Remove ``func``'s retry policy; False if it had none."""
        result = await self.extension("retry_clear", func=_text(func))
        return bool(result["cleared"])

    async def failed_list(self, func: Name | None = None) -> list[dict[str, Any]]:
        """The failed set (of ``func``, or every function the caller may see):
        func, name, attempts, failed_at, how, worker, last_data…"""
        args = {} if func is None else {"func": _text(func)}
        result: list[dict[str, Any]] = await self.extension("failed_list", **args)
        return result

    async def failed_retry(self, func: Name, *names: Name) -> list[str]:
        """Put failed jobs back in the pending set, due now, attempts reset."""
        result = await self.extension(
            "failed_retry", func=_text(func), names=[_text(n) for n in names]
        )
        return list(result["retried"])

    async def failed_purge(self, func: Name, *names: Name) -> list[str]:
        """Delete failed jobs of ``func`` (all of them without ``names``)."""
        args: dict[str, Any] = {"func": _text(func)}
        if names:
            args["names"] = [_text(n) for n in names]
        result = await self.extension("failed_purge", **args)
        return list(result["purged"])

    # ------------------------------------------------------------ schedules

    async def schedule_add(
        self,
        func: Name,
        name: Name,
        cron: str,
        *,
        tz: str = "UTC",
        workload: bytes | str = b"",
        timeout: int = 0,  # noqa: ASYNC109 - the jobs' field, not a wait
        overlap: str = "skip",
        catch_up: str = "none",
    ) -> dict[str, Any]:
        """Have the server submit job ``name`` of ``func`` at each tick of
        ``cron`` (five fields, read in zone ``tz``); replaces a schedule of the
        same name.  Returns the schedule as ``schedule_list`` shows it."""
        if isinstance(workload, bytes):
            workload = workload.decode("utf-8", "surrogateescape")
        result: dict[str, Any] = await self.extension(
            "schedule_add", func=_text(func), name=_text(name), cron=cron, tz=tz,
            workload=workload, timeout=timeout, overlap=overlap, catch_up=catch_up,
        )  # fmt: skip
        return result

    async def schedule_list(self, func: Name | None = None) -> list[dict[str, Any]]:
        """Every schedule (the caller may see), each naming its ``func`` and ``name``."""
        args = {} if func is None else {"func": _text(func)}
        result: list[dict[str, Any]] = await self.extension("schedule_list", **args)
        return result

    async def schedule_remove(self, func: Name, name: Name) -> None:
        """Remove a schedule (ExtensionError with status 404 when there is none).
        A job it already submitted stays."""
        await self.extension("schedule_remove", func=_text(func), name=_text(name))

    async def _data(self, packet: Packet, what: str, wait: float | None = None) -> bytes:
        reply = await self.conn.request(packet, wait=wait)
        if isinstance(reply, Data):
            return reply.data
        expect_success(reply, what)
        raise UnexpectedReply(f"{what} answered with SUCCESS")

    # ------------------------------------------------------------ running

    async def run_job(
        self,
        func: Name,
        name: Name,
        workload: bytes | str = b"",
        *,
        timeout: int = 10,  # noqa: ASYNC109 - `timeout` is the job's field (the server waits it)
        on_data: Callable[[bytes], Awaitable[object] | object] | None = None,
        check: bool = True,
    ) -> bytes:
        """Run ``func/name`` now and return its result.

        ``timeout`` (seconds) is the job's timeout and how long the server
        waits for the result.  With ``on_data`` the job's WORK_DATA chunks are
        passed to it (it may be async) as they arrive.  Raises
        :class:`NoWorker` if no worker has the function and, with ``check``,
        :class:`JobFailed` when the server answers ``failed`` / ``expired`` /
        ``removed``.
        """
        if on_data is not None:
            async with self.stream_job(func, name, workload, timeout=timeout, check=check) as run:
                async for chunk in run:
                    outcome = on_data(chunk)
                    if inspect.isawaitable(outcome):
                        await outcome
                return await run.result()
        job = WireJob(encode_name(func), encode_name(name), to_bytes(workload), 0, 0, timeout)
        reply = await self.conn.request(RunJob(job), wait=_result_wait(timeout))
        if isinstance(reply, NoWorkerPacket):
            raise _no_worker(func)
        if not isinstance(reply, Data):
            raise UnexpectedReply(f"RUN_JOB answered with {type(reply).__name__}")
        return _check_result(func, name, reply.data) if check else reply.data

    def stream_job(
        self,
        func: Name,
        name: Name,
        workload: bytes | str = b"",
        *,
        timeout: int = 10,
        check: bool = True,
    ) -> JobRun:
        """Run a job and iterate over its data chunks::

        async with client.stream_job("report", "q3") as run:
            async for chunk in run:
                ...
            result = await run.result()
        """
        return JobRun(self.conn, func, name, to_bytes(workload), timeout, check)

    def recv_data(self, func: Name, name: Name, *, timeout: int = 0) -> DataStream:
        """The WORK_DATA chunks of the job ``func/name`` until it ends::

            async for chunk in client.recv_data("report", "q3"):
                ...

        The server keeps the subscription ``timeout`` seconds (60 if 0); when
        that runs out it deletes the job (PROTOCOL.md §9.1).
        """
        return DataStream(self.conn, func, name, timeout)


class DataStream:
    """RECV_DATA: an async iterator over a job's chunks (also an async context manager)."""

    def __init__(self, conn: Connection, func: Name, name: Name, timeout: int) -> None:
        self._conn = conn
        self._func = func
        self._name = name
        self._timeout = timeout
        self._sub: Subscription | None = None
        self._ended = False

    async def start(self) -> None:
        """Send RECV_DATA and wait for the server to accept it (idempotent)."""
        if self._sub is not None or self._ended:
            return
        self._sub = sub = self._conn.open_subscription()
        job = WireJob(encode_name(self._func), encode_name(self._name), timeout=self._timeout)
        try:
            await self._conn.send(sub.msgid, RecvData(job))
            reply = await sub.receive(self._conn.timeout)
            if isinstance(reply, NoWorkerPacket):
                raise _no_worker(self._func)
            expect_success(reply, "RECV_DATA")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop listening (chunks arriving later are dropped)."""
        self._ended = True
        if self._sub is not None:
            self._sub.close()

    def _on_packet(self, packet: Packet) -> bytes | None:
        """A chunk, or None at the end of the stream."""
        if isinstance(packet, Data):
            if packet.data == EOF:
                self.close()
                return None
            return packet.data
        self.close()
        if isinstance(packet, NoWorkerPacket):
            raise _no_worker(self._func)
        raise UnexpectedReply(f"RECV_DATA stream got {type(packet).__name__}")

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        await self.start()
        if self._ended or self._sub is None:
            raise StopAsyncIteration
        packet = await self._sub.receive(_result_wait(self._timeout))
        chunk = self._on_packet(packet)
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class JobRun:
    """RUN_JOB with its data stream: iterate for chunks, then ``await result()``."""

    def __init__(
        self, conn: Connection, func: Name, name: Name, workload: bytes, timeout: int, check: bool
    ) -> None:
        self._conn = conn
        self._func = func
        self._name = name
        self._workload = workload
        self._timeout = timeout
        self._check = check
        self._sub: Subscription | None = None
        self._run_msgid = 0
        self._result: Packet | None = None
        self._stream_ended = False

    async def __aenter__(self) -> Self:
        conn = self._conn
        self._sub = sub = conn.open_subscription()
        try:
            # RECV_DATA first and wait for its SUCCESS, so no chunk can be missed.
            func, name = encode_name(self._func), encode_name(self._name)
            await conn.send(sub.msgid, RecvData(WireJob(func, name, timeout=self._timeout)))
            reply = await sub.receive(conn.timeout)
            if isinstance(reply, NoWorkerPacket):
                raise _no_worker(self._func)
            expect_success(reply, "RECV_DATA")
            self._run_msgid = sub.add_msgid()
            job = WireJob(func, name, self._workload, 0, 0, self._timeout)
            await conn.send(self._run_msgid, RunJob(job))
        except BaseException:
            sub.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sub is not None:
            self._sub.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def _next(self) -> bytes | None:
        """The next chunk; None once the stream ended (EOF, or the result came)."""
        if self._sub is None:
            raise RuntimeError("use 'async with client.stream_job(...)'")
        while not self._stream_ended and self._result is None:
            msgid, packet = await self._sub.receive_tagged(_result_wait(self._timeout))
            if msgid == self._run_msgid:
                self._result = packet
            elif isinstance(packet, Data) and packet.data != EOF:
                return packet.data
            else:
                self._stream_ended = True
        return None

    async def result(self) -> bytes:
        """The job's result (skipping chunks not yet read); see :meth:`Client.run_job`."""
        while await self._next() is not None:
            pass
        assert self._sub is not None
        while self._result is None:
            msgid, packet = await self._sub.receive_tagged(_result_wait(self._timeout))
            if msgid == self._run_msgid:
                self._result = packet
        reply = self._result
        if isinstance(reply, NoWorkerPacket):
            raise _no_worker(self._func)
        if not isinstance(reply, Data):
            raise UnexpectedReply(f"RUN_JOB answered with {type(reply).__name__}")
        return _check_result(self._func, self._name, reply.data) if self._check else reply.data
