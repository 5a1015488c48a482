"""A minimal Periodic client over real sockets for tests: raw frames, no magic."""

from __future__ import annotations

import struct
import zlib

import trio

from trio_periodic.protocol.connection import ClientConnection, RegistrationReply, Response
from trio_periodic.protocol.constants import MAGIC_REQ, ClientType
from trio_periodic.protocol.frames import Registration
from trio_periodic.protocol.packets import Packet

TIMEOUT = 10


class RawConn:
    """One registered connection; ``request`` sends and waits for the reply."""

    def __init__(self, stream: trio.abc.Stream, proto: ClientConnection) -> None:
        self.stream = stream
        self.proto = proto
        self.conn_id: int | None = None
        self._pending: list[Response] = []

    @classmethod
    async def open(
        cls,
        address: str | tuple[str, int],
        kind: ClientType = ClientType.CLIENT,
        name: bytes | None = None,
        token: bytes | None = None,
    ) -> RawConn:
        if isinstance(address, tuple):
            stream: trio.abc.Stream = await trio.open_tcp_stream(*address)
        else:
            stream = await trio.open_unix_socket(address)
        proto = ClientConnection(Registration(kind, name, token))
        conn = cls(stream, proto)
        await stream.send_all(proto.initiate())
        with trio.fail_after(TIMEOUT):
            while conn.conn_id is None:
                await conn._fill()
        return conn

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.proto.receive_data(data)
        for event in self.proto.next_events():
            if isinstance(event, RegistrationReply):
                self.conn_id = event.conn_id
            else:
                self._pending.append(event)

    async def send(self, msgid: int, packet: Packet) -> None:
        await self.stream.send_all(self.proto.send(msgid, packet))

    async def send_many(self, items: list[tuple[int, Packet]]) -> None:
        await self.stream.send_all(b"".join(self.proto.send(m, p) for m, p in items))

    async def recv(self, timeout: float = TIMEOUT) -> Response:
        with trio.fail_after(timeout):
            while not self._pending:
                await self._fill()
        return self._pending.pop(0)

    async def recv_for(self, msgid: int, timeout: float = TIMEOUT) -> Response:
        """The next response on ``msgid`` (others stay queued)."""
        with trio.fail_after(timeout):
            while True:
                for i, r in enumerate(self._pending):
                    if r.msgid == msgid:
                        return self._pending.pop(i)
                await self._fill()

    async def nothing_for(self, seconds: float) -> bool:
        """True if nothing arrives within ``seconds``."""
        with trio.move_on_after(seconds):
            await self.recv(timeout=seconds + 1)
            return False
        return True

    async def request(self, msgid: int, packet: Packet) -> Packet:
        await self.send(msgid, packet)
        return (await self.recv_for(msgid)).packet

    async def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closes the socket (replies read meanwhile are kept)."""
        with trio.move_on_after(timeout):
            try:
                while True:
                    await self._fill()
            except (EOFError, trio.BrokenResourceError, ConnectionResetError):
                return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()


def frame(body: bytes, *, crc: int | None = None, length: int | None = None) -> bytes:
    """One request frame around ``body``, with its length and CRC-32 right unless
    given (to build bad frames on purpose)."""
    return (
        MAGIC_REQ
        + struct.pack(
            ">II",
            len(body) if length is None else length,
            zlib.crc32(body) if crc is None else crc,
        )
        + body
    )
