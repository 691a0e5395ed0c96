"""A pass over sorted records in parts, one per core: a large run's end.

A run's end is one pass over its records in order: each is parsed, tallied (the summary, the
overview, each known divergence's and contract's counts), drawn as a row of the report, and stored
for the results JSON. On one core that was 4.4 s of the large tier's 324,480 records while every
other core sat idle. Here the records are cut into runs of whole cases about equal in number
(`SortedSpill.case_bounds`), one per usable core; this process folds the first, a forked process
each of the others, and each later part is merged into this one's in order (`Fold.merge`). What the
merge makes is what one pass would have made, byte for byte (tests/test_record_passes.py).

A forked part inherits the spill (its chunks on disk, its buffer in memory) and the folds, still
empty. It imports nothing, runs only the pass (plain Python and file writes), pickles its folds and
its store beside the store, and leaves with `os._exit`: it never returns into its caller's code
(pytest's, xdist's) and runs none of their exit handlers. It dies with its parent, and on the stop
signals at once. A part whose process failed (it raised, was killed, ran out of memory) is folded
again here, in its turn: a failed part costs time, never a result.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

from conformance import lifetime
from conformance.record_files import RecordFile, SortedSpill, copy_bytes, fold_into_store

# Below this many records the pass is one part: a fork, its pickled folds and the merge cost more
# than the part saves (about 14 us a record on one core).
PARTS_LEAST_RECORDS = 50_000
MOST_PARTS = 8  # (each part holds a report's rows and tallies of its own until merged)


class Fold(Protocol):
    """What a pass makes of records, handed one at a time in order; `merge` takes the same fold
    made of the records that follow, in another process. A fold opens no file before its first
    record (a forked part starts from an empty copy of it), and pickles (a part's travels back)."""

    def add(self, record: Mapping[str, Any], /) -> object: ...

    def merge(self, later: Self, /) -> None: ...


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - (not Linux)
        return os.cpu_count() or 1


def fold_in_parts(spill: SortedSpill, folds: Sequence[Fold], directory: Path, parts: int | None = None) -> RecordFile:
    """Every record of `spill`, in order, handed to each of `folds` and stored in a new store in
    `directory` (`fold_into_store`), in up to `parts` parts: by default one per usable core, and
    one alone below `PARTS_LEAST_RECORDS` or where processes cannot fork. The spill is used up."""
    if parts is None:
        enough = spill.count >= PARTS_LEAST_RECORDS and hasattr(os, "fork")
        parts = min(usable_cores(), MOST_PARTS) if enough else 1
    bounds = spill.case_bounds(parts) if parts > 1 else []
    if not bounds:
        return fold_into_store(spill.lines(), [fold.add for fold in folds], directory, spill.count)
    ranges = list(zip([None, *bounds], [*bounds, None], strict=True))
    forked: list[_ForkedPart] = []
    stores: list[RecordFile] = []  # (this part's, then a later one's until appended: removed if the pass stops)
    try:
        for number, (low, high) in enumerate(ranges[1:], start=1):
            forked.append(_fork_part(spill, folds, directory, low, high, number))
        stores.append(fold_into_store(spill.between(*ranges[0]), [fold.add for fold in folds], directory))
        for part, (low, high) in zip(forked, ranges[1:], strict=True):
            made = part.result()
            if made is None:  # its process failed: fold its records here, in their turn
                stores.append(fold_into_store(spill.between(low, high), [fold.add for fold in folds], directory))
            else:
                stores.append(made[0])
                for fold, later in zip(folds, made[1], strict=True):
                    fold.merge(later)
            append_store(stores[0], stores.pop())
    except BaseException:
        for store in stores:
            store.discard()
        raise
    finally:
        for part in forked:
            part.end()
        spill.discard()
    assert stores[0].count == spill.count, f"stored {stores[0].count} records of {spill.count}"
    return stores[0]


def append_store(store: RecordFile, more: RecordFile) -> None:
    """`more`'s records after `store`'s, in `store`'s file (both are results blocks:
    `RecordFile.block`); `more` is discarded."""
    if more.count:
        with store.path.open("r+b") as handle, more.path.open("rb") as source:
            handle.seek(0, os.SEEK_END)
            if store.count:  # (a block ends with its last record's newline; the next follows a comma)
                handle.seek(-1, os.SEEK_END)
                handle.write(b",\n")
                handle.flush()
            copy_bytes(source, handle)
        store.count += more.count
    more.discard()


@dataclass
class _ForkedPart:
    pid: int
    directory: Path
    name: str  # what the part's files are called: its store, and its store and folds pickled (`made`)
    reaped: bool = False

    @property
    def made(self) -> Path:
        return self.directory / f".{self.name}.pickle"

    def result(self) -> tuple[RecordFile, list[Any]] | None:
        """The part's store and folds, once its process has ended; None if it failed."""
        _, status = os.waitpid(self.pid, 0)
        self.reaped = True
        made: tuple[RecordFile, list[Any]] | None = None
        if status == 0:
            with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError), self.made.open("rb") as handle:
                made = pickle.load(handle)
        self.made.unlink(missing_ok=True)
        if made is None:
            self._remove_its_store()
        return made

    def end(self) -> None:
        """Kill and reap the part's process if it is still there (the pass was stopped, or raised)."""
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.reaped = True
            self.made.unlink(missing_ok=True)
            self._remove_its_store()

    def _remove_its_store(self) -> None:
        for path in self.directory.glob(f".{self.name}-*.jsonl"):
            path.unlink(missing_ok=True)


def _fork_part(
    spill: SortedSpill, folds: Sequence[Fold], directory: Path, low: str | None, high: str | None, number: int
) -> _ForkedPart:
    parent = os.getpid()
    part = _ForkedPart(0, directory, f"part-{number}-of-{parent}")
    with warnings.catch_warnings():
        # (Python 3.12 and JAX, where it is imported, warn that a process with threads may deadlock
        # a forked child: this child takes no lock another thread may hold, as it imports, logs and
        # prints nothing and touches none of their objects.)
        warnings.filterwarnings("ignore", r".*multi-?threaded.*fork|.*fork.*multi-?threaded", DeprecationWarning)
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        pid = os.fork()
    if pid:
        part.pid = pid
        return part
    status = 1
    try:
        lifetime.die_with_parent(parent)
        for stop in lifetime.STOP_SIGNALS:  # (the parent's handlers would unwind into its caller's code)
            signal.signal(stop, signal.SIG_DFL)
        store = fold_into_store(spill.between(low, high), [fold.add for fold in folds], directory, name=part.name)
        with part.made.open("wb") as handle:
            pickle.dump((store, list(folds)), handle, protocol=pickle.HIGHEST_PROTOCOL)
        status = 0
    finally:
        os._exit(status)  # (the forked part never returns into its caller, whatever it raised)
