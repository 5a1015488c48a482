"""beanstalkd, gearman and redis codecs on hand-made replies."""

from __future__ import annotations

from bench.proto import gearman as gm
from bench.proto.base import JobSpec
from bench.proto.beanstalk import BeanstalkAdapter
from bench.proto.redis import RedisAdapter, command


def test_beanstalk_put_and_replies() -> None:
    adapter = BeanstalkAdapter()
    assert adapter.submit(1, JobSpec(b"f", b"j1", b"xy", 3)) == b"put 1024 3 60 5\r\n\x02j1xy\r\n"
    buf = bytearray(b"INSERTED 1\r\nINSERTED 2\r\nJOB_TOO_BIG\r\nINSERT")
    assert adapter.count_replies(buf) == (2, 1, 37)


def test_beanstalk_worker_waits_for_the_whole_body() -> None:
    worker = BeanstalkAdapter().worker(b"f", 2)
    assert worker.start() == b"reserve\r\nreserve\r\n"
    full = b"RESERVED 7 5\r\n\x02j1xy\r\n"
    names, out, used = worker.feed(bytearray(b"DELETED\r\n" + full + full[:-3]))
    assert names == [b"j1"]
    assert out == b"delete 7\r\nreserve\r\n"
    assert used == 9 + len(full)


def test_gearman_submit_and_replies() -> None:
    adapter = gm.GearmanAdapter()
    pkt = adapter.submit(1, JobSpec(b"f", b"u1", b"data"))
    assert pkt == b"\x00REQ" + (18).to_bytes(4, "big") + (9).to_bytes(4, "big") + b"f\x00u1\x00data"
    created = b"\x00RES" + (8).to_bytes(4, "big") + (4).to_bytes(4, "big") + b"H:x1"
    error = b"\x00RES" + (19).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"e\x00m"
    assert adapter.count_replies(bytearray(created * 2 + error + created[:5])) == (2, 1, 47)


def _res(ptype: int, *args: bytes) -> bytes:
    data = b"\x00".join(args)
    return b"\x00RES" + ptype.to_bytes(4, "big") + len(data).to_bytes(4, "big") + data


def test_gearman_worker_sleeps_and_wakes() -> None:
    worker = gm.GearmanAdapter().worker(b"f", 1)
    assert worker.start() == gm.packet(gm.GRAB_JOB_UNIQ)
    names, out, _ = worker.feed(bytearray(_res(gm.NO_JOB)))
    assert (names, out) == ([], gm.packet(gm.PRE_SLEEP))
    names, out, _ = worker.feed(bytearray(_res(gm.NOOP)))
    assert (names, out) == ([], gm.packet(gm.GRAB_JOB_UNIQ))
    assign = _res(gm.JOB_ASSIGN_UNIQ, b"H:x1", b"f", b"u1", b"da\x00ta")
    names, out, used = worker.feed(bytearray(assign))
    assert names == [b"u1"]
    assert out == gm.packet(gm.WORK_COMPLETE, b"H:x1", b"") + gm.packet(gm.GRAB_JOB_UNIQ)
    assert used == len(assign)


def test_redis_lpush_and_brpop() -> None:
    adapter = RedisAdapter()
    assert adapter.submit(1, JobSpec(b"q", b"j", b"w")) == command(b"LPUSH", b"q", b"\x01jw")
    assert adapter.count_replies(bytearray(b":1\r\n:2\r\n-ERR x\r\n:3")) == (2, 1, 16)
    worker = adapter.worker(b"q", 1)
    reply = b"*2\r\n$1\r\nq\r\n$3\r\n\x01jw\r\n"
    names, out, used = worker.feed(bytearray(reply + reply[:8]))
    assert names == [b"j"]
    assert out == command(b"BRPOP", b"q", b"0")
    assert used == len(reply)
