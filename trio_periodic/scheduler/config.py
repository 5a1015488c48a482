"""Server settings reachable through CONFIG_GET / CONFIG_SET (PROTOCOL.md §12)."""

from __future__ import annotations

#: Keys and the reference defaults.  Unknown keys read as 0 and are ignored on set.
DEFAULTS: dict[str, int] = {
    "timeout": 600,  # default job timeout, seconds (a job's own timeout wins when > 0)
    "lock-timeout": 300,  # kept for compatibility: locks end with their job here
    "assign-wait": 2,  # kept for compatibility: late confirmations are waited for
    "keepalive": 120,  # idle connection limit, seconds; 0 disables
    "max-batch-size": 500,
    "max-pool-size": 2,
    "run-job-aggressive": 0,
}

U32_MAX = 0xFFFFFFFF
