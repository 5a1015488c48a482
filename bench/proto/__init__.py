"""Raw-socket protocol codecs, one module per server kind.

Each module exposes an adapter (see :mod:`bench.proto.base`) that the load generator drives.
"""
