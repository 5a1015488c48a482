"""Open the store a URI names (``-p/--path``, env ``PERIODIC_PATH``).

This module sits above the stores: it imports them, none of them imports it.
See :mod:`trio_periodic.store.uri` for the URI forms.
"""

from __future__ import annotations

import os

from trio_periodic.store.base import Store, StoreError
from trio_periodic.store.memory import MemoryStore
from trio_periodic.store.uri import FILE_SCHEME, default_store_uri, redact_uri

__all__ = ["default_store_uri", "open_store"]


def open_store(uri: str) -> Store:
    """Build (but do not open) the store named by ``uri``; StoreError if unsupported."""
    if uri == ":memory:":
        return MemoryStore()
    lowered = uri.lower()
    if lowered.startswith(FILE_SCHEME):
        path = uri[len(FILE_SCHEME) :]
        if not path:
            raise StoreError(f"store URI has no path: {uri!r}")
        from trio_periodic.store.sqlite import SqliteStore

        return SqliteStore(os.path.expanduser(path))
    if lowered.startswith(("postgres://", "postgresql://")):
        try:
            from trio_periodic.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL stores need psycopg: pip install 'trio-periodic[postgres]' ({exc})"
            ) from exc
        return PostgresStore(uri)
    raise StoreError(f"unsupported store URI: {redact_uri(uri)}")
