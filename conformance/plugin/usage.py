"""What a process that ran checks used: how many it ran and when, its peak memory, what it held
between checks, its framework children's memory and replacements, and its time split (the results'
`environment.processes`; benchmarks/ reads them)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conformance import held_memory, timing
from conformance.adapters import child

_checks_key = pytest.StashKey[dict[str, Any]]()


def count_checks(config: pytest.Config, checks: int, started: float) -> None:
    """Checks run in this process, and the span from the first one's start to the last one's end: the
    parallel part of a run, without process start, collection and the report."""
    usage = config.stash.setdefault(_checks_key, {"checks": 0, "first_check_at": started})
    usage["checks"] += checks
    usage["last_check_at"] = time.time()


def process_usage(config: pytest.Config) -> dict[str, Any]:
    checks: dict[str, Any] = config.stash.get(_checks_key, {"checks": 0})
    return {
        **checks,
        **held_memory.usage(),  # peak_rss_bytes, and what it held between checks
        "children": child.tallies(),
        **{kind: round(total, 3) for kind, total in timing.totals().items()},
    }
