"""``python -m trio_periodic.cli`` is the ``periodic`` command."""

from __future__ import annotations

from trio_periodic.cli.entry import main

if __name__ == "__main__":
    main()
