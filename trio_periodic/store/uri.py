"""Store URIs as text (``-p/--path``, env ``PERIODIC_PATH``): no store is opened here.

Which store a URI names is decided in :mod:`trio_periodic.store.from_uri`:

| URI                                   | store                            |
|---------------------------------------|----------------------------------|
| ``:memory:``                          | MemoryStore (nothing survives)   |
| ``file:///abs/path``, ``file://rel``  | SqliteStore at that path         |
| ``postgres://…``, ``postgresql://…``  | PostgresStore (needs psycopg)    |

``file://PATH`` takes PATH literally (no percent-decoding), as periodicd does:
``file:///var/lib/p.db`` is ``/var/lib/p.db`` and ``file://data/p.db`` is
``data/p.db`` relative to the working directory.  Anything else is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

FILE_SCHEME = "file://"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE)


def default_store_uri() -> str:
    """``file://$XDG_DATA_HOME/trio-periodic/periodic.db``; XDG_DATA_HOME defaults to
    ``~/.local/share``."""
    data_home = os.environ.get("XDG_DATA_HOME", "")
    # The XDG spec says relative paths in these variables are invalid: ignore them.
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"
    return FILE_SCHEME + str(base / "trio-periodic" / "periodic.db")


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for logs and error messages).

    Handles ``scheme://user:secret@host/…``, ``?password=secret`` and the libpq
    key=value form ``postgres://host=… password='secret'``.
    """
    m = _SCHEME.match(uri)
    if m and not is_keyword_form(uri[m.end() :]):
        rest = uri[m.end() :]
        authority_end = len(rest.split("?", 1)[0])
        at = rest.rfind("@", 0, authority_end)
        if at >= 0 and ":" in rest[:at]:
            user = rest[:at].split(":", 1)[0]
            uri = f"{uri[: m.end()]}{user}:***{rest[at:]}"
    return _PASSWORD_KV.sub(r"\1***", uri)


def is_keyword_form(rest: str) -> bool:
    """True for a libpq ``key=value …`` string (the reference's ``postgres://host=…``)."""
    m = re.search(r"[=/@:?]", rest)
    return m is not None and m.group() == "="
