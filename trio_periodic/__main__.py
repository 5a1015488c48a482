"""``python -m trio_periodic`` is the ``periodic`` command."""

from __future__ import annotations

from trio_periodic.cli import main

if __name__ == "__main__":
    main()
