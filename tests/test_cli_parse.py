"""``periodic`` command lines → command objects, without any server."""

from __future__ import annotations

import pytest
from cyclopts import CycloptsError

from trio_periodic.cli import UsageError, parse, run_cli
from trio_periodic.cli.invocation import (
    ConfigGet,
    ConfigSet,
    Drop,
    Dump,
    ExecWorker,
    Globals,
    Invocation,
    Load,
    Ping,
    Recv,
    Remove,
    RunJob,
    Serve,
    Shutdown,
    Status,
    Submit,
    WorkerCmd,
)
from trio_periodic.server.options import ServerOptions
from trio_periodic.transport.tls import TlsOptions


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "PERIODIC_PORT",
        "PERIODIC_CLIENT_NAME",
        "PERIODIC_CLIENT_TOKEN",
        "PERIODIC_PATH",
        "PERIODIC_LOG",
        "PERIODIC_HTTP",
        "PERIODIC_TLS_CA",
        "PERIODIC_TLS_CERT",
        "PERIODIC_TLS_KEY",
        "THREAD",
    ):
        monkeypatch.delenv(var, raising=False)


def cmd(*argv: str) -> object:
    inv = parse(argv)
    assert inv is not None
    return inv.command


G = Globals()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], Status()),
        (["status", "--json"], Status(json=True)),
        (["submit", "f", "n"], Submit("f", "n")),
        (
            ["submit", "f", "n", "-w", "data", "--later", "30", "--timeout", "5"],
            Submit("f", "n", workload="data", later=30, timeout=5),
        ),
        (["submit", "f", "n", "-w", "@/tmp/file"], Submit("f", "n", workload="@/tmp/file")),
        (["run", "f", "n"], RunJob("f", "n")),
        (["run", "f", "n", "-w", "x", "--timeout", "3"], RunJob("f", "n", workload="x", timeout=3)),
        (["recv", "f", "n"], Recv("f", "n")),
        (["remove", "f", "a"], Remove("f", ("a",))),
        (["remove", "f", "a", "b", "c"], Remove("f", ("a", "b", "c"))),
        (["drop", "f"], Drop(("f",))),
        (["drop", "f", "g"], Drop(("f", "g"))),
        (["config", "get", "timeout"], ConfigGet("timeout")),
        (["config", "set", "timeout", "30"], ConfigSet("timeout", 30)),
        (["dump", "out.db"], Dump("out.db")),
        (["load", "in.db"], Load("in.db")),
        (["ping"], Ping()),
        (["shutdown"], Shutdown()),
        (["serve"], Serve()),
        (
            ["serve", "-p", ":memory:", "--log", "DEBUG", "--http", "off"],
            Serve(options=ServerOptions(path=":memory:", log="DEBUG", http="off")),
        ),
    ],
)
def test_reference_commands(argv: list[str], expected: object) -> None:
    assert parse(argv) == Invocation(G, expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # The seed README, verbatim.
        (["run", "-f", "ls5", "--exec", "/x/ls-every-five-second.sh"],
         ExecWorker("ls5", "/x/ls-every-five-second.sh")),
        (["submit", "-f", "ls5", "-n", "/tmp/"], Submit("ls5", "/tmp/")),
        (["submit", "-f", "f", "-n", "n", "--args", "@lit", "-t", "9", "--sched_later", "60"],
         Submit("f", "n", args="@lit", later=60, timeout=9)),
        (["run", "-f", "f", "--exec", "cmd arg", "-n", "4"], ExecWorker("f", "cmd arg", 4)),
        (["remove", "-f", "f", "-n", "job"], Remove("f", ("job",))),
        (["drop", "-f", "f"], Drop(("f",))),
        (["dump", "-o", "dump.db"], Dump("dump.db")),
        (["load", "-i", "dump.db"], Load("dump.db")),
    ],
)  # fmt: skip
def test_seed_forms(argv: list[str], expected: object) -> None:
    assert cmd(*argv) == expected


def test_daemon_flag() -> None:
    assert parse(["-d"]) == Invocation(G, Serve())
    inv = parse(["-d", "-H", "tcp://:5000"])
    assert inv is not None
    assert inv.command == Serve(hosts=("tcp://:5000",))


def test_daemon_flag_reads_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIODIC_PORT", "unix:///tmp/x.sock")
    monkeypatch.setenv("PERIODIC_PATH", ":memory:")
    monkeypatch.setenv("PERIODIC_HTTP", "off")
    assert cmd("-d") == Serve(
        ("unix:///tmp/x.sock",), ServerOptions(path=":memory:", log="INFO", http="off")
    )


def test_serve_uses_global_hosts() -> None:
    assert cmd("-H", "tcp://:1", "-H", "unix:///s", "serve") == Serve(("tcp://:1", "unix:///s"))


def test_worker_forms() -> None:
    assert cmd("worker", "f", "--", "echo", "-n", "hi") == WorkerCmd("f", ("echo", "-n", "hi"))
    # Like periodic-run, without `--`: the first non-option is FUNC, the rest the command.
    assert cmd("worker", "--thread", "3", "f", "ls", "-l") == WorkerCmd("f", ("ls", "-l"), thread=3)
    full = cmd(
        "worker", "--thread", "2", "--timeout", "5", "--broadcast", "--lock-name", "L",
        "--lock-count", "3", "--retry-secs", "7", "--skip-fail", "--work-data", "--no-name",
        "f", "--", "prog", "--flag",
    )  # fmt: skip
    assert full == WorkerCmd(
        "f", ("prog", "--flag"), thread=2, timeout=5, broadcast=True, lock_name="L",
        lock_count=3, retry_secs=7, skip_fail=True, work_data=True, no_name=True,
    )  # fmt: skip
    assert cmd("worker", "f", "--data", "--", "cat") == WorkerCmd("f", ("cat",), data=True)
    pipe = cmd("worker", "--pipe", "--ready-timeout", "0", "f", "--", "runner.py")
    assert pipe == WorkerCmd("f", ("runner.py",), pipe=True, ready_timeout=0)


def test_thread_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREAD", "4")
    assert cmd("worker", "f", "--", "true") == WorkerCmd("f", ("true",), thread=4)


def test_globals() -> None:
    inv = parse(["-H", "tcp://h:1", "--client-name", "me", "--client-token", "tk", "ping"])
    assert inv == Invocation(Globals(("tcp://h:1",), "me", "tk"), Ping())
    assert inv.globals.url == "tcp://h:1"
    assert G.url == "unix:///tmp/periodic.sock"
    # A global option after the command works too.
    late = parse(["status", "-H", "tcp://h:2"])
    assert late is not None and late.globals.hosts == ("tcp://h:2",)


def test_globals_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIODIC_PORT", "tcp://e:1")
    monkeypatch.setenv("PERIODIC_CLIENT_NAME", "n")
    monkeypatch.setenv("PERIODIC_CLIENT_TOKEN", "t")
    inv = parse(["ping"])
    assert inv == Invocation(Globals(("tcp://e:1",), "n", "t"), Ping())
    # An empty PERIODIC_PORT counts as unset.
    monkeypatch.setenv("PERIODIC_PORT", "")
    inv = parse(["ping"])
    assert inv is not None and inv.globals.url == "unix:///tmp/periodic.sock"


@pytest.mark.parametrize(
    "argv",
    [
        ["bogus"],
        ["status", "extra"],
        ["submit", "f"],
        ["submit", "f", "n", "-f", "g"],
        ["submit", "f", "n", "-w", "a", "--args", "b"],
        ["submit", "f", "n", "--later", "soon"],
        ["run", "f"],
        ["run", "-f", "f"],
        ["run", "--exec", "x"],
        ["run", "f", "n", "--exec", "x"],
        ["run", "-f", "f", "--exec", " "],
        ["remove", "f"],
        ["drop"],
        ["config", "set", "k", "notint"],
        ["config", "set", "k", "-1"],
        ["config", "get"],
        ["dump"],
        ["load"],
        ["worker", "f"],
        ["worker", "f", "--data", "--work-data", "--", "x"],
        ["worker", "f", "--thread", "0", "--", "x"],
        ["--client-name", "only", "ping"],
        ["-d", "status"],
        ["status", "--unknown"],
    ],
)
def test_bad_command_lines(argv: list[str]) -> None:
    with pytest.raises((CycloptsError, UsageError)):
        parse(argv)


def test_bad_command_line_is_one_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["submit", "f"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("periodic: missing the job name")


@pytest.mark.parametrize(
    "argv",
    [[], ["--help"], ["status", "--help"], ["worker", "--help"], ["config", "set", "--help"],
     ["run", "--help"], ["--version"]],
)  # fmt: skip
def test_help_and_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert parse(argv) is None
    out = capsys.readouterr().out
    assert out.strip()


def test_help_comes_from_docstrings(capsys: pytest.CaptureFixture[str]) -> None:
    parse(["run", "--help"])
    out = capsys.readouterr().out
    assert "SCHED_LATER" in out and "--exec" in out and "Job timeout in seconds" in out


def test_keygen_parses_the_reference_form() -> None:
    from trio_periodic.cli.invocation import Keygen

    assert parse(["keygen", "server"]).command == Keygen("server", 256)  # type: ignore[union-attr]
    assert parse(["keygen", "server", "-s", "128"]).command == Keygen("server", 128)  # type: ignore[union-attr]


def test_keygen_writes_pkcs1_pems(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    base = tmp_path / "node"
    out = subprocess.run(
        [sys.executable, "-m", "trio_periodic", "keygen", str(base), "-s", "128"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Keys written to ")
    private_pem = (tmp_path / "node_private_key.pem").read_bytes()
    public_pem = (tmp_path / "node_public_key.pem").read_bytes()
    assert private_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    key = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 1024
    assert (
        serialization.load_pem_public_key(public_pem).public_numbers()
        == key.public_key().public_numbers()
    )  # type: ignore[union-attr]
    assert (tmp_path / "node_private_key.pem").stat().st_mode & 0o077 == 0
    bad = subprocess.run(
        [sys.executable, "-m", "trio_periodic", "keygen", str(base), "-s", "8"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "key size" in bad.stderr and "Traceback" not in bad.stderr


def test_serve_takes_every_server_flag() -> None:
    inv = parse(
        ["serve", "--max-outbox", "1MiB", "--max-connections", "7", "--drain-timeout", "2.5"]
    )
    assert inv is not None and isinstance(inv.command, Serve)
    options = inv.command.options
    assert (options.max_outbox, options.max_connections, options.drain_timeout) == (
        1024 * 1024,
        7,
        2.5,
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [("4096", 4096), ("4k", 4096), ("4KiB", 4096), ("4MiB", 4 << 20), ("1g", 1 << 30)],
)
def test_sizes(text: str, size: int) -> None:
    from trio_periodic.server.options import parse_size

    assert parse_size(text) == size


def test_bad_size_is_a_usage_error() -> None:
    assert run_cli(["serve", "--max-outbox", "lots"]) == 2


# ------------------------------------------------------------------------- TLS


def test_tls_global_options() -> None:
    argv = ["-H", "tls://h:5443", "--tls-ca", "ca.pem", "--tls-cert", "me.pem", "--tls-key", "k"]
    inv = parse([*argv, "ping"])
    tls = TlsOptions("ca.pem", "me.pem", "k")
    assert inv == Invocation(Globals(("tls://h:5443",), tls=tls), Ping())
    # FUNC is still found when the worker's command follows without `--`.
    assert cmd(*argv, "worker", "f", "echo", "hi") == WorkerCmd("f", ("echo", "hi"))


def test_tls_options_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERIODIC_TLS_CA", "ca.pem")
    inv = parse(["ping"])
    assert inv is not None and inv.globals.tls == TlsOptions(ca="ca.pem")


def test_tls_key_without_a_certificate_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--tls-key needs --tls-cert"):
        parse(["--tls-key", "k", "ping"])
    assert run_cli(["--tls-key", "k", "ping"]) == 2


def test_serve_takes_the_tls_flags() -> None:
    argv = ["serve", "--tls-cert", "s.pem", "--tls-key", "s.key", "--tls-client-ca", "ca.pem"]
    command = cmd(*argv, "--http", "https://127.0.0.1:8443")
    assert isinstance(command, Serve)
    o = command.options
    assert (o.tls_cert, o.tls_key, o.tls_client_ca) == ("s.pem", "s.key", "ca.pem")
    assert o.http_address == "https://127.0.0.1:8443"


def test_daemon_flag_gives_the_certificate_to_the_server() -> None:
    command = cmd("-d", "-H", "tls://:5443", "--tls-cert", "s.pem", "--tls-key", "s.key")
    assert isinstance(command, Serve) and command.hosts == ("tls://:5443",)
    assert (command.options.tls_cert, command.options.tls_key) == ("s.pem", "s.key")
