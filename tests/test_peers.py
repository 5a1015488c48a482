"""Peer names in log lines: by socket family, under TLS too, and when the peer is gone."""

from __future__ import annotations

import socket
import ssl

import trio

from trio_periodic.transport.peers import peer_name


async def test_tcp_unix_tls_and_gone_peers() -> None:
    with trio.fail_after(5):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        assert peer_name(server) == f"127.0.0.1:{client.socket.getsockname()[1]}"
        tls = trio.SSLStream(server, ssl.create_default_context(), server_hostname="x")
        assert peer_name(tls) == peer_name(server)
        # A TCP socket whose peer address is gone is not mistaken for a Unix one.
        unconnected = trio.SocketStream(trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        assert peer_name(unconnected) == "?"
        left, right = trio.socket.socketpair()
        assert peer_name(trio.SocketStream(left)).startswith("unix:")
        for stream in (client, server, unconnected, trio.SocketStream(right)):
            await stream.aclose()
        left.close()
        await listener.aclose()
