"""Starting and stopping servers: free ports, readiness, RSS and CPU from /proc, peer installs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

PEER_PACKAGES = {
    "beanstalkd": ("beanstalkd", "beanstalkd"),
    "gearmand": ("gearmand", "gearman-job-server"),
    "redis": ("redis-server", "redis-server"),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def find_binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (
            str(p)
            for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
            if (p := Path(d) / name).exists()
        ),
        None,
    )


def ensure_peers(peers: Sequence[str], log: Callable[[str], None]) -> dict[str, str]:
    """Install missing peers with apt-get; return {peer: reason} for those still missing."""
    missing = {p: PEER_PACKAGES[p] for p in peers if find_binary(PEER_PACKAGES[p][0]) is None}
    if not missing:
        return {}
    packages = sorted({pkg for _, pkg in missing.values()})
    apt = shutil.which("apt-get")
    reason = ""
    if apt is None:
        reason = "apt-get not available"
    elif os.geteuid() != 0:
        reason = "not root, cannot apt-get install"
    else:
        log(f"installing {' '.join(packages)} with apt-get (once)…")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = [apt, "install", "-y", "--no-install-recommends", *packages]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            subprocess.run([apt, "update"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            reason = "apt-get install failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return {
        p: reason or f"{binary} still not found after install"
        for p, (binary, _) in missing.items()
        if find_binary(binary) is None
    }


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def rss_bytes(pid: int) -> int:
    """VmRSS of the process and its descendants (the server may be behind a wrapper)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree (all threads)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


@dataclass(frozen=True)
class CpuSample:
    """The CPU a process tree has used so far, two ways.

    ``ticks_s``: utime + stime from /proc/PID/stat, in clock ticks (10 ms), including threads
    that have exited.  ``tasks``: nanoseconds on CPU of every live thread
    (/proc/PID/task/TID/schedstat), {(pid, tid): ns}; empty where the kernel lacks it."""

    ticks_s: float
    tasks: dict[tuple[int, int], int]


def cpu_sample(pid: int) -> CpuSample:
    tasks: dict[tuple[int, int], int] = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    text = Path(f"/proc/{p}/task/{tid}/schedstat").read_text()
                    tasks[(p, int(tid))] = int(text.split()[0])
    return CpuSample(cpu_seconds(pid), tasks)


def cpu_used(before: CpuSample, after: CpuSample) -> float:
    """CPU seconds the process tree used between two samples.

    Per-thread nanoseconds when every thread of ``before`` is still there in ``after`` (a
    thread started in between counts from zero); otherwise a thread's time since ``before``
    would be lost, so the clock-tick totals are used."""
    if before.tasks and after.tasks and before.tasks.keys() <= after.tasks.keys():
        ns = sum(v - before.tasks.get(k, 0) for k, v in after.tasks.items())
        return max(ns, 0) / 1e9
    return max(after.ticks_s - before.ticks_s, 0.0)


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > end:
                raise TimeoutError(
                    f"nothing listening on {HOST}:{port} after {timeout:.0f}s"
                ) from None
            time.sleep(0.01)


@dataclass
class Server:
    """A server process we started; ``stop`` ends it by PID (and its descendants)."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        """Start the process without waiting for it to listen."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start the process and wait until its port accepts connections."""
        self.spawn()
        assert self.proc is not None
        try:
            wait_port(self.port, self.proc, ready_timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process (then its leftover descendants), SIGKILL after ``grace``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        tree = process_tree(self.proc.pid)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(5)
        return self.proc.returncode

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def running(server: Server, ready_timeout: float = 30.0) -> Iterator[Server]:
    server.start(ready_timeout)
    try:
        yield server
    finally:
        server.stop()
