"""The harness's caches of a case's arrays: bounded in count and in bytes, released with the process's
other caches (conformance/held_memory.py)."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import numpy as np
import pytest

from conformance import held_memory
from conformance.held_memory import BoundedEntries, array_bytes, bounded_cache

MIB = 1 << 20


def mib(n: int) -> np.ndarray:
    return np.zeros(n * MIB, dtype=np.uint8)


@dataclass(frozen=True)
class Prepared:
    values: np.ndarray
    pair: tuple[np.ndarray, np.ndarray]
    name: str


def test_array_bytes_counts_arrays_in_fields_and_tuples() -> None:
    assert array_bytes(mib(1)) == MIB
    assert array_bytes(Prepared(mib(2), (mib(1), mib(1)), "x")) == 4 * MIB
    assert array_bytes("text") == 0 and array_bytes(Prepared) == 0  # (a class is no value)


def test_entries_keep_the_most_recently_used_within_their_count() -> None:
    entries: BoundedEntries[int] = BoundedEntries(maxsize=2)
    entries["a", "f32"], entries["b", "f32"] = 1, 2
    assert entries["a", "f32"] == 1  # now the most recent
    entries["c", "f32"] = 3
    assert ("b", "f32") not in entries and ("a", "f32") in entries and len(entries) == 2


def test_beyond_the_running_cases_entries_the_bytes_are_bounded() -> None:
    entries: BoundedEntries[np.ndarray] = BoundedEntries(maxsize=16, max_bytes=3 * MIB)
    entries["a", "f32"], entries["b", "f32"] = mib(1), mib(1)
    assert entries.held_bytes == 2 * MIB
    entries["c", "f32", "grad-input"] = mib(2)  # others hold 2 MiB: within the bound
    entries["c", "f32", "grad-kernel"] = mib(2)  # the running case's own are never counted against it
    assert len(entries) == 4
    entries["c", "f64"] = mib(2)  # another dtype: the others (6 MiB) go, least recently used first
    assert list(entries._entries) == [("c", "f32", "grad-kernel"), ("c", "f64")]
    assert entries.held_bytes == 4 * MIB
    entries["huge", "f32"] = mib(9)  # over the bound alone: kept, its case's next checks reuse it
    assert list(entries._entries) == [("c", "f64"), ("huge", "f32")] and entries.held_bytes == 11 * MIB
    entries["huge", "f32"] = mib(1)  # replaced: counted once
    assert entries.held_bytes == 3 * MIB
    entries.clear()
    assert len(entries) == 0 and entries.held_bytes == 0


def test_the_running_cases_entries_stay_however_old() -> None:
    """Another case's check came between two of this case's: the other case's entry goes, though
    the running case's first entry is the least recently used."""
    entries: BoundedEntries[np.ndarray] = BoundedEntries(maxsize=16, max_bytes=2 * MIB)
    entries["c", "f32", "grad-input"] = mib(2)
    entries["d", "f32"] = mib(3)  # (c's 2 MiB are within the bound)
    entries["c", "f32", "grad-kernel"] = mib(2)
    assert list(entries._entries) == [("c", "f32", "grad-input"), ("c", "f32", "grad-kernel")]


def test_a_bounded_cache_keeps_values_not_exceptions_and_is_released() -> None:
    calls: list[int] = []

    @bounded_cache(4)
    def square(case: str, n: int) -> np.ndarray:
        calls.append(n)
        if n < 0:
            raise ValueError("negative")
        return np.full(3, n * n)

    assert square("a", 3) is square("a", 3) and calls == [3]
    for _ in range(2):
        with pytest.raises(ValueError):
            square("a", -1)
    assert calls == [3, -1, -1]
    assert square.__name__ == "square"
    assert any(release == square.entries.clear for release in held_memory._releases)
    square.cache_clear()
    square("a", 3)
    assert calls == [3, -1, -1, 3]


class _Node:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_what_a_framework_s_load_leaves_is_frozen_until_a_release_collects_it() -> None:
    """After a load (`keep_for_good`) the collector no longer visits what the process held, not even
    a cycle that was garbage already; a release gives it back to the collector, frees that cycle, and
    freezes what is still alive again."""
    gc.unfreeze()  # (what this test process froze before is the collector's again)
    try:
        cycle = weakref.ref(_Node())
        held = _Node()
        held_memory.keep_for_good()
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert cycle() is not None, "a frozen cycle is not visited by a collection"
        held_memory.release()
        assert cycle() is None, "a release collects what was frozen"
        assert gc.get_freeze_count() > 0, "what a release leaves alive is frozen again"
        gc.unfreeze()
        held_memory.release()
        assert gc.get_freeze_count() == 0, "a process that froze nothing has nothing frozen after a release"
        assert held.me is held
    finally:
        gc.unfreeze()


def test_a_framework_child_freezes_what_its_framework_s_load_leaves() -> None:
    """A framework child freezes its heap once its framework is loaded (`CheckAvailable`), as a worker
    does (conformance/isolation.py): its calls' collections do not walk the framework's objects."""
    from conformance.adapters.child import InChildProcess
    from tests.fault_adapters import ReportsFrozen

    adapter = InChildProcess(ReportsFrozen(), "in-child", {"CONFORMANCE_TEST_CHILD": "frozen"}, devices=("cpu",))
    adapter.check_available("cpu")
    assert adapter.environment()["frozen"] > 1000
