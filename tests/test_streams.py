"""ByteFrameStream's direct reads on a real socket pair: the read that waits
first (after one found nothing) still gets every byte, in order, and stays
cancellable; a peer that has bytes waiting is read without waiting again."""

from __future__ import annotations

import trio

from trio_periodic.transport.streams import YIELD_EVERY, ByteFrameStream


async def _pair() -> tuple[ByteFrameStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return ByteFrameStream(trio.SocketStream(a), "test"), trio.SocketStream(b)


async def test_a_read_that_found_nothing_makes_the_next_one_wait_first() -> None:
    stream, peer = await _pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.send_all, b"one")
            assert await stream.receive_some() == b"one"
        # Nothing sent yet: the read finds nothing and waits.
        async with trio.open_nursery() as nursery:

            async def later() -> None:
                await trio.sleep(0.05)
                await peer.send_all(b"two")

            nursery.start_soon(later)
            assert await stream.receive_some() == b"two"
        assert stream._wait_first
        # Bytes already waiting: read after waiting first, none lost.
        await peer.send_all(b"three")
        assert await stream.receive_some() == b"three"
        # Cancelled while it waits first: nothing is consumed.
        with trio.move_on_after(0.05) as scope:
            await stream.receive_some()
        assert scope.cancelled_caught
        await peer.send_all(b"four")
        assert await stream.receive_some() == b"four"
    await stream.aclose()
    await peer.aclose()


async def test_a_pipelining_peer_is_noticed_by_the_next_probe() -> None:
    stream, peer = await _pair()
    with trio.fail_after(5):
        with trio.move_on_after(0.05):
            await stream.receive_some()
        assert stream._wait_first
        got = b""
        for i in range(YIELD_EVERY):
            await peer.send_all(b"%02d" % i)
            got += await stream.receive_some()
        # Within YIELD_EVERY reads one read first, found bytes and
        # switched back to reading without waiting.
        assert not stream._wait_first
        assert got == b"".join(b"%02d" % i for i in range(YIELD_EVERY))
    await stream.aclose()
    await peer.aclose()
