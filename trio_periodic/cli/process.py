"""Child processes for the command-line workers: run, feed, read lines, kill.

Every child starts in its own session (process group), so a timeout or a
shutdown kills the whole tree a script started — otherwise a grandchild that
keeps stdout open would keep us waiting for EOF.  Killing is SIGTERM, then
SIGKILL after :data:`KILL_GRACE` seconds.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import trio

__all__ = [
    "ChildResult",
    "LineReader",
    "kill_process_group",
    "parse_size",
    "run_child",
    "spawn",
    "watch_memory",
]

#: Seconds between SIGTERM and SIGKILL.
KILL_GRACE = 2.0
#: Seconds we keep reading stdout after the process exited (its orphans may hold it).
EOF_GRACE = 1.0
#: Longest line we keep whole; longer lines are cut (the rest becomes the next line).
MAX_LINE = 16 * 1024 * 1024


class SpawnError(Exception):
    """The program could not be started."""


@dataclass(frozen=True, slots=True)
class ChildResult:
    #: The exit status (negative: killed by that signal).
    returncode: int
    #: True if we killed it because it ran past its time limit.
    timed_out: bool
    #: True if we killed it because its memory went over the limit.
    over_memory: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.over_memory

    def describe(self) -> str:
        if self.timed_out:
            return "killed after its time limit"
        if self.over_memory:
            return "killed: its memory went over the limit"
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exited with status {self.returncode}"


class LineReader:
    """Lines from a byte stream; a last line without a newline still counts."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._eof = False

    async def readline(self) -> bytes | None:
        """The next line without its ``\\n`` (and ``\\r``), or None at EOF."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0 or len(self._buf) >= MAX_LINE:
                cut = end if end >= 0 else MAX_LINE
                line = bytes(self._buf[:cut])
                del self._buf[: cut + 1 if end >= 0 else cut]
                return line.removesuffix(b"\r")
            if self._eof:
                if self._buf:
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line.removesuffix(b"\r")
                return None
            try:
                data = await self._stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._eof = True
            else:
                self._buf += data


async def spawn(argv: Sequence[str], *, stdout: bool) -> trio.Process:
    """Start ``argv`` (no shell) with a stdin pipe and, if asked, a stdout pipe."""
    try:
        return await trio.lowlevel.open_process(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if stdout else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise SpawnError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def kill_process_group(proc: trio.Process, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def stop_process(proc: trio.Process) -> None:
    """SIGTERM the process group, SIGKILL it if needed, reap the process (shielded)."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            kill_process_group(proc, signal.SIGTERM)
            with trio.move_on_after(KILL_GRACE):
                await proc.wait()
            # Whatever else it started goes too.
            kill_process_group(proc, signal.SIGKILL)
            await proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                await trio.aclose_forcefully(stream)


async def _feed(stream: trio.abc.SendStream, data: bytes) -> None:
    try:
        if data:
            await stream.send_all(data)
        await stream.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the child does not read its stdin: fine


async def _read_lines(
    reader: LineReader, on_line: Callable[[bytes], Awaitable[None]], done: trio.Event
) -> None:
    while (line := await reader.readline()) is not None:
        await on_line(line)
    done.set()


def parse_size(text: str) -> int:
    """``--mem-limit`` values: bytes, or a number with k, m or g (×1024ⁿ)."""
    value = text.strip().lower()
    scale = 1
    if value and value[-1] in "kmg":
        scale = 1024 ** ("kmg".index(value[-1]) + 1)
        value = value[:-1]
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"bad memory size {text!r} (expected e.g. 512m or 2g)") from None
    if number < 0:
        raise ValueError(f"memory size must not be negative: {text!r}")
    return int(number * scale)


def rss_bytes(pid: int) -> int | None:
    """The resident memory of a process in bytes, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


async def watch_memory(pid: int, limit: int, on_exceed: Callable[[], None]) -> None:
    """Check ``pid``'s RSS every second; call ``on_exceed`` once it is over ``limit``.

    (The reference compares its byte limit with ``ps``'s KiB, so its limit is
    in effect 1024 times larger; ours is what it says.)"""
    while True:
        rss = rss_bytes(pid)
        if rss is None:
            return
        if rss > limit:
            on_exceed()
            return
        await trio.sleep(1)


async def run_child(
    argv: Sequence[str],
    stdin: bytes,
    *,
    time_limit: float | None,
    on_line: Callable[[bytes], Awaitable[None]] | None = None,
    mem_limit: int = 0,
) -> ChildResult:
    """Run ``argv`` to completion with ``stdin`` as its input.

    With ``on_line`` stdout is read line by line (until EOF) and passed to
    it; otherwise stdout is inherited.  After ``time_limit`` seconds (None or
    0: no limit), or once its RSS is over ``mem_limit`` bytes (0: no limit),
    the process group is killed.  :class:`SpawnError` if it cannot start.
    """
    proc = await spawn(argv, stdout=on_line is not None)
    limit = time_limit if time_limit else math.inf
    memory = trio.CancelScope()
    try:
        with trio.move_on_after(limit) as scope, memory:
            async with trio.open_nursery() as nursery:
                if mem_limit:
                    nursery.start_soon(watch_memory, proc.pid, mem_limit, memory.cancel)
                assert proc.stdin is not None
                nursery.start_soon(_feed, proc.stdin, stdin)
                read_all = trio.Event()
                if on_line is not None:
                    assert proc.stdout is not None
                    nursery.start_soon(_read_lines, LineReader(proc.stdout), on_line, read_all)
                else:
                    read_all.set()
                await proc.wait()
                # The job ends with the process; output still held open by
                # something it left running is not waited for long.
                with trio.move_on_after(EOF_GRACE):
                    await read_all.wait()
                nursery.cancel_scope.cancel()
    finally:
        await stop_process(proc)
    assert proc.returncode is not None
    return ChildResult(proc.returncode, scope.cancelled_caught, memory.cancelled_caught)
