"""`--conformance-shard K/N`: which cases this run takes, so N machines (a CI matrix) split a corpus.

The unit is the whole case, all its targets and dtypes: a case's tensors, reference and compiled
programs are shared by its checks. A case's shard is a stable hash of its id, the same on every
machine, Python and framework version, so a case that fails in shard 2 today is in shard 2
tomorrow. With `--conformance-durations` (an earlier run's results) the cases that run measured
are dealt out longest first to the least loaded shard instead, which evens wall times when a few
cases (the large gradient grids) cost most of the run; a case the file lacks is placed by hash.
Every shard process computes the same assignment from the same corpus and file, without talking
to the others.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from conformance.plugin.options import settings


def hashed_shard(case_id: str, count: int) -> int:
    """1-based shard of a case: the first 8 bytes of SHA-256 of its id (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(case_id.encode("utf-8")).digest()[:8], "big") % count + 1


def case_seconds(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Seconds per case in a results file: its checks' durations, less the framework loading that
    fell on them (each worker loads a framework once, whichever case comes first)."""
    seconds: dict[str, float] = defaultdict(float)
    for record in records:
        spent = float(record.get("duration_s") or 0.0) - float(record.get("load_s") or 0.0)
        seconds[record["case"]] += max(0.0, spent)
    return dict(seconds)


def balanced(seconds: Mapping[str, float], count: int) -> dict[str, int]:
    """Longest processing time first: each case, longest first (ties by id), to the shard with the
    least time so far (ties: the lowest number). At most 4/3 of the best split's longest shard."""
    loads = [(0.0, shard) for shard in range(1, count + 1)]
    assigned = {}
    for case, spent in sorted(seconds.items(), key=lambda item: (-item[1], item[0])):
        load, shard = heapq.heappop(loads)
        assigned[case] = shard
        heapq.heappush(loads, (load + spent, shard))
    return assigned


_plan_key = pytest.StashKey["ShardPlan | None"]()


class ShardPlan:
    def __init__(self, index: int, count: int, measured: dict[str, int], durations: Path | None) -> None:
        self.index = index
        self.count = count
        self.measured = measured  # case -> shard, from --conformance-durations
        self.durations = durations

    def takes(self, case_id: str) -> bool:
        return (self.measured.get(case_id) or hashed_shard(case_id, self.count)) == self.index

    def describe(self) -> str:
        how = (
            f"balanced by {self.durations} ({len(self.measured)} cases measured)"
            if self.durations
            else "by case-id hash"
        )
        return f"shard {self.index}/{self.count}, whole cases {how}"


def plan(config: pytest.Config) -> ShardPlan | None:
    """This run's shard, or None when the run is not sharded."""
    if _plan_key not in config.stash:
        options = settings(config)
        if options.shard is None:
            config.stash[_plan_key] = None
        else:
            measured: dict[str, int] = {}
            if options.durations_path is not None:
                from conformance.results import read_results

                try:
                    measured = balanced(case_seconds(read_results(options.durations_path)["results"]), options.shard[1])
                except (OSError, ValueError, KeyError) as exc:
                    raise pytest.UsageError(f"--conformance-durations {options.durations_path}: {exc}") from None
            config.stash[_plan_key] = ShardPlan(*options.shard, measured, options.durations_path)
    return config.stash[_plan_key]


def takes(config: pytest.Config, case_id: str) -> bool:
    """Whether this run's shard runs the case (every case when the run is not sharded)."""
    shard = plan(config)
    return shard is None or shard.takes(case_id)
