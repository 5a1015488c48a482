"""Array parameters for the PostgreSQL store, encoded in one pass.

Theory of operation
-------------------
The store's hot statements take their rows as arrays (``unnest``): a
commit of 80 changes sends a dozen arrays of 80 elements.  psycopg adapts a
Python list element by element through its generic machinery, which made
parameter conversion the largest single cost of a transaction on the trio
thread.  The four list types here (``Bytea``, ``Int8``, ``Float8``,
``Text``) carry their PostgreSQL element type, and their dumpers write
PostgreSQL's binary array format (as ``array_send`` does: one dimension,
lower bound 1, a length of -1 for NULL) with one ``struct`` call or one
join.  They are registered with psycopg's global adapters when this module
is imported, for these types only.
"""

from __future__ import annotations

import struct
from itertools import chain
from typing import Final

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

_LENGTH: Final = struct.Struct(">i")
_INT8: Final = struct.Struct(">iq")
_FLOAT8: Final = struct.Struct(">id")
_NULL: Final = _LENGTH.pack(-1)


def _header(elem_oid: int, count: int, has_null: bool) -> bytes:
    if count == 0:
        return struct.pack(">iii", 0, 0, elem_oid)
    return struct.pack(">iiiii", 1, int(has_null), elem_oid, count, 1)


class Bytea(list[bytes]):
    """A ``bytea[]`` parameter."""


class Int8(list[int]):
    """An ``int8[]`` parameter."""


class Float8(list[float | None]):
    """A ``float8[]`` parameter (None is NULL)."""


class Text(list[str | None]):
    """A ``text[]`` parameter (None is NULL)."""


class _ByteaDumper(Dumper):
    format = Format.BINARY
    oid = 1001  # bytea[]

    def dump(self, obj: Bytea) -> bytes:
        pack = _LENGTH.pack
        body = b"".join(chain.from_iterable((pack(len(b)), b) for b in obj))
        return _header(17, len(obj), False) + body


class _Int8Dumper(Dumper):
    format = Format.BINARY
    oid = 1016  # int8[]

    def dump(self, obj: Int8) -> bytes:
        n = len(obj)
        body = struct.pack(">" + "iq" * n, *chain.from_iterable((8, v) for v in obj))
        return _header(20, n, False) + body


class _Float8Dumper(Dumper):
    format = Format.BINARY
    oid = 1022  # float8[]

    def dump(self, obj: Float8) -> bytes:
        pack = _FLOAT8.pack
        body = b"".join(_NULL if v is None else pack(8, v) for v in obj)
        return _header(701, len(obj), None in obj) + body


class _TextDumper(Dumper):
    format = Format.BINARY
    oid = 1009  # text[]

    def dump(self, obj: Text) -> bytes:
        pack = _LENGTH.pack
        parts: list[bytes] = []
        for s in obj:
            if s is None:
                parts.append(_NULL)
            else:
                data = s.encode()
                parts += (pack(len(data)), data)
        return _header(25, len(obj), None in obj) + b"".join(parts)


for _cls, _dumper in ((Bytea, _ByteaDumper), (Int8, _Int8Dumper), (Float8, _Float8Dumper),
                      (Text, _TextDumper)):  # fmt: skip
    psycopg.adapters.register_dumper(_cls, _dumper)
