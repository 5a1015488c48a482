"""The protocol package is sans-I/O: importing it must not pull in any I/O library."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = ["trio", "socket", "asyncio", "sqlite3", "ssl", "selectors"]


def test_protocol_imports_no_io_modules() -> None:
    # trio_periodic/__init__.py may legitimately import trio (the client API), so the
    # parent package is replaced by an empty stand-in: this checks what the protocol
    # package itself imports, and that it reaches into no sibling package.
    code = textwrap.dedent(
        f"""
        import importlib.util, sys, types
        spec = importlib.util.find_spec("trio_periodic")
        parent = types.ModuleType("trio_periodic")
        parent.__path__ = list(spec.submodule_search_locations)
        sys.modules["trio_periodic"] = parent

        before = set(sys.modules)
        import trio_periodic.protocol
        from trio_periodic.protocol import *  # every public name resolves
        new = set(sys.modules) - before

        bad = sorted(
            name for name in sys.modules
            if name.split(".")[0] in {FORBIDDEN!r}
        )
        siblings = sorted(
            name for name in new
            if name.startswith("trio_periodic.")
            and not name.startswith("trio_periodic.protocol")
        )
        print(repr((bad, siblings)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "([], [])", result.stdout
