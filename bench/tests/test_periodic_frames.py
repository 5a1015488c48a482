"""The Periodic encoder against the byte examples of PROTOCOL.md §16, and the worker."""

from __future__ import annotations

from bench.proto import periodic as pp
from bench.proto.base import JobSpec


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace("\n", " "))


def test_registration_frames() -> None:
    assert pp.registration(pp.TYPE_CLIENT) == hexbytes("00 52 45 51 00 00 00 01 a5 05 df 1b 01")
    assert pp.registration(pp.TYPE_WORKER) == hexbytes("00 52 45 51 00 00 00 01 3c 0c 8e a1 02")


def test_ping_and_pong() -> None:
    assert pp.frame(1, pp.PING) == hexbytes("00 52 45 51 00 00 00 05 a6 e5 7e f8 00 00 00 01 09")
    pong = pp.frame(1, pp.PONG, magic=pp.RES)
    assert pong == hexbytes("00 52 45 53 00 00 00 05 3f ec 2f 42 00 00 00 01 0a")


SUBMIT = hexbytes(
    "00 52 45 51 00 00 00 1b 1e 75 ec 1c 00 00 00 02 0d"
    " 04 65 63 68 6f 01 61 00 00 00 02 68 69 00 00 00 00 65 53 f1 00 00"
)
JOB_ASSIGN = hexbytes(
    "00 52 45 53 00 00 00 1f db 92 99 e8 00 00 00 07 05"
    " 04 65 63 68 6f 01 61 00 00 00 02 68 69 00 00 00 00 65 53 f1 00 02 00 00 02 58"
)


def test_submit_job() -> None:
    job = JobSpec(b"echo", b"a", b"hi", 1700000000)
    assert pp.PeriodicAdapter().submit(2, job) == SUBMIT


def test_job_assign_encoding_and_decoding() -> None:
    payload = pp.encode_job(b"echo", b"a", b"hi", 1700000000, timeout=600)
    assert pp.frame(7, pp.JOB_ASSIGN, payload, magic=pp.RES) == JOB_ASSIGN
    job = pp.decode_job(JOB_ASSIGN[17:])
    assert job == pp.Job(b"echo", b"a", b"hi", 1700000000, 0, 600)
    assert pp.job_handle(JOB_ASSIGN[17:]) == b"\x04echo\x01a"


def test_job_assigned_and_work_done() -> None:
    assert pp.frame(7, pp.JOB_ASSIGNED) == hexbytes(
        "00 52 45 51 00 00 00 05 c5 0a 71 84 00 00 00 07 21"
    )
    done = pp.frame(8, pp.WORK_DONE, b"\x04echo\x01a" + b"ok")
    assert done == hexbytes(
        "00 52 45 51 00 00 00 0e c9 9f ee 4b 00 00 00 08 03 04 65 63 68 6f 01 61 6f 6b"
    )


def test_count_replies_handles_partial_frames() -> None:
    success = pp.frame(2, pp.SUCCESS, magic=pp.RES)
    assert success == hexbytes("00 52 45 53 00 00 00 05 e9 a3 85 fb 00 00 00 02 10")
    other = pp.frame(3, pp.NO_WORKER, magic=pp.RES)
    buf = bytearray(success * 3 + other + success[:10])
    assert pp.PeriodicAdapter().count_replies(buf) == (3, 1, 4 * 17)


def test_worker_answers_assign_with_assigned_done_and_regrab() -> None:
    worker = pp.PeriodicAdapter().worker(b"echo", 2)
    grabs = worker.start()
    frames, used = pp.split_frames(bytearray(grabs))
    assert used == len(grabs)
    slots = [m for m, cmd, _ in frames if cmd == pp.GRAB_JOB]
    assert len(slots) == 2
    assign = pp.frame(slots[0], pp.JOB_ASSIGN, JOB_ASSIGN[17:], magic=pp.RES)
    ok = pp.frame(99, pp.SUCCESS, magic=pp.RES)
    buf = bytearray(ok + assign + assign[:5])
    names, out, used = worker.feed(buf)
    assert names == [b"a"]
    assert used == len(ok) + len(assign)
    reply, _ = pp.split_frames(bytearray(out))
    assert [(m, c) for m, c, _ in reply] == [
        (slots[0], pp.JOB_ASSIGNED),
        (reply[1][0], pp.WORK_DONE),
        (slots[0], pp.GRAB_JOB),
    ]
    assert reply[1][2] == b"\x04echo\x01a"
