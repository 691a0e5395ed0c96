"""Where a check's time goes: loading a framework, inside the framework calls, inside the reference.

Everything else a run spends (collection, data generation, comparison, records, the report) is the
harness's own overhead; `benchmarks/` divides a run's wall time by these sums to show how much.
Totals are per process and only ever grow, so a check reads them before and after (`since`).
"""

from __future__ import annotations

import time

from conformance.records import Record

LOAD = "load_s"  # importing a framework, starting its device or child process
FRAMEWORK = "framework_s"  # the framework's own calls (compilation included: it is the framework's work)
REFERENCE = "reference_s"  # the float64 NumPy reference: forward answers, derivatives and their bounds
KINDS = (LOAD, FRAMEWORK, REFERENCE)

_totals = dict.fromkeys(KINDS, 0.0)
NOTHING_SPENT = Record(load_s=0.0, framework_s=0.0, reference_s=0.0)  # a check that ran nothing


class spent:  # (lower case: it is used as a function was, `with timing.spent(FRAMEWORK):`)
    """The block's seconds, added to `kind`'s total. A class, not a generator: a check enters several,
    and a generator's context manager costs several times what it measures around a small call."""

    __slots__ = ("kind", "started")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        _totals[self.kind] += time.perf_counter() - self.started


def totals() -> dict[str, float]:
    return dict(_totals)


def since(before: dict[str, float]) -> Record:
    """Seconds of each kind spent since `before` (a `totals()`), rounded: the record's timing fields.
    (Spelled out, without a helper per kind: it runs once a check.)"""
    return Record(
        load_s=round(_totals[LOAD] - before[LOAD], 6),
        framework_s=round(_totals[FRAMEWORK] - before[FRAMEWORK], 6),
        reference_s=round(_totals[REFERENCE] - before[REFERENCE], 6),
    )
