"""`--conformance-shard K/N`: which cases this run takes, so N machines (a CI matrix) split a corpus.

The unit is a geometry: every case of one operation, input and kernel shape, rate, stride,
padding and groups, with all their targets and dtypes. A framework traces or compiles a program
per geometry (a `tf.function`, a Keras model, an ONNX Runtime session, a JAX program), and the
checks that share one reuse it: the large tier draws 130 inputs per geometry, and a shard that
took a third of each geometry's draws would build every program again in each shard.

A file's units are dealt to the shards in turn, in the order of a stable hash of each geometry:
the same on every machine, Python and framework version, so with the same case files a case that
fails in shard 2 today is in shard 2 tomorrow. With `--conformance-durations` (an earlier run's
results) the units that run measured are dealt out longest first to the least loaded shard
instead, which evens wall times when a few units (the large gradient grids, the large tier's
draws) cost most of the run; the units the file lacks are dealt in turn. Every shard process
computes the same assignment from the same corpus and file, without talking to the others.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from conformance.cases import Case
from conformance.check_records import geometry_fields
from conformance.plugin.options import settings

# A record's geometry (conformance.check_records.geometry_fields), in the order a unit's key writes
# it; a transposed convolution's output padding comes last (other records do not state one).
GEOMETRY_FIELDS = ("operation", "input_shape", "kernel_shape", "rate", "stride", "padding", "groups")


def _digest(text: str) -> int:
    """The first 8 bytes of SHA-256 of `text` (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def dealt(units: Iterable[str], count: int, suite: str) -> dict[str, int]:
    """One file's units, each to a 1-based shard: in the order of their digests, to each shard in
    turn, from a shard the suite's name picks. Each shard gets as many of a file's units as any
    other, give or take one; a digest mod N per unit left a file of a few large units uneven (the
    large tier's 48 geometries of 130 draws came out as 155,480 records in one shard and 81,120 in another)."""
    start = _digest(suite) % count
    ordered = sorted(set(units), key=lambda unit: (_digest(unit), unit))
    return {unit: (start + position) % count + 1 for position, unit in enumerate(ordered)}


def unit_of_record(record: Mapping[str, Any]) -> str:
    """The shard unit of a result record's case: the geometry the record states, as JSON."""
    return json.dumps([record[name] for name in GEOMETRY_FIELDS] + [record.get("output_padding")])


def unit_of_case(case: Case) -> str:
    """The shard unit a case belongs to: its geometry (what a framework compiles a program for),
    read off the fields its records state, so a durations file places it the same way."""
    return unit_of_record(geometry_fields(case))


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

    def taken(self, cases: Sequence[Case]) -> list[Case]:
        """The cases of one file (all of one suite) that this shard runs."""
        units = [unit_of_case(case) for case in cases]
        unmeasured = dealt((unit for unit in units if unit not in self.measured), self.count, cases[0].suite)
        return [
            case
            for case, unit in zip(cases, units, strict=True)
            if (self.measured.get(unit) or unmeasured[unit]) == self.index
        ]

    def describe(self) -> str:
        how = (
            f"balanced by {self.durations} ({len(self.measured)} geometries measured)"
            if self.durations
            else "dealt in turn in each file"
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


def taken(config: pytest.Config, cases: Sequence[Case]) -> list[Case]:
    """The cases of one file that this run's shard runs (all of them when the run is not sharded)."""
    shard = plan(config)
    return list(cases) if shard is None or not cases else shard.taken(cases)
