"""`--conformance-shard K/N`: which cases this run takes, so N machines (a CI matrix) split a corpus.

The unit is a geometry: every case of one operation, input and kernel shape, rate, stride,
padding and groups, with all their targets and dtypes. A framework traces or compiles a program
per geometry (a `tf.function`, a Keras model, an ONNX Runtime session, a JAX program), and the
checks that share one reuse it: the large tier draws 130 inputs per geometry, and a shard that
took a third of each geometry's draws would build every program again in each shard. A unit's
shard is a stable hash of its geometry, the same on every machine, Python and framework version,
so a case that fails in shard 2 today is in shard 2 tomorrow. With `--conformance-durations` (an
earlier run's results) the units that run measured are dealt out longest first to the least
loaded shard instead, which evens wall times when a few units (the large gradient grids, the
large tier's draws) cost most of the run; a unit the file lacks is placed by hash. Every shard
process computes the same assignment from the same corpus and file, without talking to the others.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from conformance.cases import Case
from conformance.plugin.options import settings
from conformance.semantics import TransposedGeometry


def hashed_shard(unit: str, count: int) -> int:
    """1-based shard of a unit: the first 8 bytes of SHA-256 of its key (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(unit.encode("utf-8")).digest()[:8], "big") % count + 1


def _geometry_key(
    operation: str, input_shape: Any, kernel_shape: Any, rate: Any, stride: Any, padding: Any, groups: int,
    output_padding: Any,
) -> str:  # fmt: skip
    # JSON: tuples and lists write alike, so a case and its records give the same text.
    return json.dumps([operation, input_shape, kernel_shape, rate, stride, padding, groups, output_padding])


def unit_of_case(case: Case) -> str:
    """The shard unit a case belongs to: its geometry (what a framework compiles a program for)."""
    geometry = case.geometry  # (a transposed SAME or VALID derives its output padding: the record states that)
    output_padding = list(geometry.output_padding) if isinstance(geometry, TransposedGeometry) else None
    return _geometry_key(
        case.op, case.input_shape, case.kernel_shape, case.rate, case.stride, case.padding, case.groups,
        output_padding,
    )  # fmt: skip


def unit_of_record(record: Mapping[str, Any]) -> str:
    """The shard unit of a result record's case, from the geometry the record states."""
    return _geometry_key(
        record["operation"], record["input_shape"], record["kernel_shape"], record["rate"], record["stride"],
        record["padding"], record["groups"], record.get("output_padding"),
    )  # fmt: skip


def unit_seconds(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Seconds per unit in a results file: its checks' durations, less the framework loading that
    fell on them (each worker loads a framework once, whichever case comes first)."""
    seconds: dict[str, float] = defaultdict(float)
    for record in records:
        spent = float(record.get("duration_s") or 0.0) - float(record.get("load_s") or 0.0)
        try:
            unit = unit_of_record(record)
        except KeyError as exc:
            raise ValueError(f"record of {record.get('case')!r} states no {exc} (its geometry places it)") from None
        seconds[unit] += max(0.0, spent)
    return dict(seconds)


def balanced(seconds: Mapping[str, float], count: int) -> dict[str, int]:
    """Longest processing time first: each unit, longest first (ties by key), to the shard with the
    least time so far (ties: the lowest number). At most 4/3 of the best split's longest shard."""
    loads = [(0.0, shard) for shard in range(1, count + 1)]
    assigned = {}
    for unit, spent in sorted(seconds.items(), key=lambda item: (-item[1], item[0])):
        load, shard = heapq.heappop(loads)
        assigned[unit] = shard
        heapq.heappush(loads, (load + spent, shard))
    return assigned


_plan_key = pytest.StashKey["ShardPlan | None"]()


class ShardPlan:
    def __init__(self, index: int, count: int, measured: dict[str, int], durations: Path | None) -> None:
        self.index = index
        self.count = count
        self.measured = measured  # unit -> shard, from --conformance-durations
        self.durations = durations

    def takes(self, case: Case) -> bool:
        unit = unit_of_case(case)
        return (self.measured.get(unit) or hashed_shard(unit, self.count)) == self.index

    def describe(self) -> str:
        how = (
            f"balanced by {self.durations} ({len(self.measured)} geometries measured)"
            if self.durations
            else "by a hash of the geometry"
        )
        return f"shard {self.index}/{self.count}, whole cases, every case of a geometry together, {how}"


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
                    measured = balanced(unit_seconds(read_results(options.durations_path)["results"]), options.shard[1])
                except (OSError, ValueError, KeyError) as exc:
                    raise pytest.UsageError(f"--conformance-durations {options.durations_path}: {exc}") from None
            config.stash[_plan_key] = ShardPlan(*options.shard, measured, options.durations_path)
    return config.stash[_plan_key]


def takes(config: pytest.Config, case: Case) -> bool:
    """Whether this run's shard runs the case (every case when the run is not sharded)."""
    shard = plan(config)
    return shard is None or shard.takes(case)
