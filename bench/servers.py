"""The servers under test: how to start each one, and which scenarios apply to it."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.procs import HOST, Server, find_binary, free_port
from bench.secure import Secure, bench_keys

OURS = ("periodic-memory", "periodic-sqlite", "periodic-pg")
#: periodicd on the memory store behind the reference's RSA transport, per data mode:
#: the same loads as periodic-memory, to show what the encryption costs.
TRANSPORTS = {"periodic-aes": "AES", "periodic-rsa": "RSA"}
PEERS = ("beanstalkd", "gearmand", "redis")
ALL_SERVERS = OURS + tuple(TRANSPORTS) + PEERS
GEARMAND_BUCKETS = 100_003


def default_periodicd() -> list[str]:
    """``periodicd`` next to this interpreter (the venv's), else on PATH, else the module."""
    here = Path(sys.executable).parent / "periodicd"
    if here.exists():
        return [str(here)]
    found = find_binary("periodicd")
    if found:
        return [found]
    return [sys.executable, "-m", "trio_periodic.cli", "serve"]


@dataclass(frozen=True)
class ServerSpec:
    name: str
    kind: str  # protocol adapter
    periodicd: tuple[str, ...] = ()
    pg_url: str = ""

    @property
    def ours(self) -> bool:
        return self.kind == "periodic"

    @property
    def secure(self) -> Secure | None:
        """How clients connect: the RSA transport's mode and keys, or None (plain)."""
        mode = TRANSPORTS.get(self.name)
        return bench_keys().client(mode) if mode else None

    @property
    def durable(self) -> bool:
        return self.name in ("periodic-sqlite", "periodic-pg")

    def make(self, workdir: Path, persistent: bool = False, port: int | None = None) -> Server:
        """A server on a fresh loopback port with its files in ``workdir``.

        ``persistent`` asks peers for their durable mode (restart scenario): beanstalkd's
        binlog, redis's RDB snapshot on shutdown."""
        port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir / f"{self.name}.log"
        if self.kind == "periodic":
            store = {
                "periodic-memory": ":memory:",
                "periodic-aes": ":memory:",
                "periodic-rsa": ":memory:",
                "periodic-sqlite": f"file://{workdir / 'periodic.db'}",
                "periodic-pg": self.pg_url,
            }[self.name]
            argv = [*self.periodicd, "-H", f"tcp://{HOST}:{port}", "-p", store, "--http", "off"]
            if self.name in TRANSPORTS:
                keys = bench_keys()
                argv += [
                    "--rsa-private-path",
                    keys.server_private,
                    "--rsa-public-path",
                    keys.client_public_dir,
                ]
        elif self.name == "beanstalkd":
            argv = [find_binary("beanstalkd") or "beanstalkd", "-l", HOST, "-p", str(port)]
            if persistent:
                (workdir / "binlog").mkdir(exist_ok=True)
                argv += ["-b", str(workdir / "binlog")]
        elif self.name == "gearmand":
            argv = [
                find_binary("gearmand") or "gearmand",
                "--listen",
                HOST,
                "--port",
                str(port),
                "--log-file",
                "none",
                "--pid-file",
                str(workdir / "gearmand.pid"),
                # the default 991 buckets make every submit with a unique id walk a chain of
                # queue/991 jobs: 39,000 jobs/s at 200,000 queued instead of 480,000
                "--hashtable-buckets",
                str(GEARMAND_BUCKETS),
            ]
        elif self.name == "redis":
            argv = [
                find_binary("redis-server") or "redis-server",
                "--port",
                str(port),
                "--bind",
                HOST,
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                "--appendonly",
                "no",
                "--save",
                "",
                "--logfile",
                "",
            ]
            if persistent:
                argv += ["--dbfilename", "dump.rdb"]
        else:
            raise ValueError(self.name)
        return Server(self.name, argv, port, log)


def make_specs(names: list[str], periodicd: str | None, pg_url: str | None) -> list[ServerSpec]:
    cmd = tuple(shlex.split(periodicd)) if periodicd else tuple(default_periodicd())
    specs = []
    for name in names:
        kind = "periodic" if name in OURS or name in TRANSPORTS else name
        specs.append(ServerSpec(name, kind, cmd if kind == "periodic" else (), pg_url or ""))
    return specs
