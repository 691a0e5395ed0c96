"""Records on disk: sorted without holding them, and read back one at a time.

A run of 10^6 checks makes about 2 GB of records, 20-30 GB as Python objects. Nothing that writes
results (the controller's results JSON, `merge`, the report) holds them: records are sorted in
chunks that are merged from disk (`sort_records`), and what is made of them is built by passes over
a `RecordFile`, which any number of readers iterate, each holding one record at a time.
"""

from __future__ import annotations

import atexit
import heapq
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import IO, Any

# Records per sorted chunk: about 40 MB of JSON text in memory while one is sorted.
CHUNK = 20_000


def record_key(record: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """The order of records in every results file: case, target, dtype, then framework version
    (a merged file holds one record per version)."""
    return (record["case"], record["target"], record["dtype"], record.get("framework_version") or "")


class RecordFile:
    """Records as JSON lines, in `record_key` order: iterable again and again, never held.

    `lines` is where the records start and how their lines are written: a file of bare lines (a
    sorted store), or the `"results": [` block of a results JSON (`results.write_json`'s layout:
    one record per line, commas at the ends, `]` on a line of its own after the last).
    """

    def __init__(self, path: Path, count: int, start: int = 0, *, owned: bool = False) -> None:
        self.path = path
        self.count = count
        self.start = start  # byte offset of the first record's line
        self.owned = owned  # a temporary store, removed by `discard`

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self.lines():
            yield json.loads(line)

    def lines(self) -> Iterator[str]:
        """Each record's JSON text (no separators): for copying records without parsing them."""
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            for raw in islice(handle, self.count):
                text = raw.decode("utf-8").strip()
                yield text[:-1] if text.endswith(",") else text

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def discard(self) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)


_scratch: list[Path] = []


def scratch_directory() -> Path:
    """This process's directory for sorted stores, removed when it exits."""
    if not _scratch:
        _scratch.append(Path(tempfile.mkdtemp(prefix="conformance-records-")))
        atexit.register(shutil.rmtree, _scratch[0], ignore_errors=True)
    return _scratch[0]


def sort_records(
    records: Iterable[Mapping[str, Any]], directory: Path | None = None, name: str = "records"
) -> RecordFile:
    """`records` in `record_key` order, in a new file in `directory` (by default this process's
    scratch directory; removed by `discard` or when the process exits).

    Chunks of `CHUNK` records are sorted in memory and written out with their keys; one heap merge
    of the chunks then writes the store. Equal keys keep their arrival order (the sort is stable).
    """
    directory = directory or scratch_directory()
    directory.mkdir(parents=True, exist_ok=True)
    chunks: list[Path] = []
    buffer: list[tuple[tuple[str, ...], int, str]] = []
    arrived = 0
    try:
        for record in records:
            buffer.append((record_key(record), arrived, json.dumps(record, allow_nan=False)))
            arrived += 1
            if len(buffer) >= CHUNK:
                chunks.append(_write_chunk(buffer, directory))
                buffer = []
        buffer.sort()
        if not chunks:  # (one chunk: no merge needed)
            return _write_store(directory, name, (line for *_, line in buffer), len(buffer))
        chunks.append(_write_chunk(buffer, directory))
        handles = [chunk.open(encoding="utf-8") for chunk in chunks]
        try:
            merged = heapq.merge(*(_read_chunk(handle) for handle in handles))
            return _write_store(directory, name, (line for *_, line in merged), arrived)
        finally:
            for handle in handles:
                handle.close()
    finally:
        for chunk in chunks:
            chunk.unlink(missing_ok=True)


def _write_chunk(buffer: list[tuple[tuple[str, ...], int, str]], directory: Path) -> Path:
    buffer.sort()
    descriptor, name = tempfile.mkstemp(dir=directory, prefix=".chunk-", suffix=".jsonl")
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        for key, arrived, line in buffer:
            # JSON text never holds a raw tab: the key and arrival number end at the first one.
            handle.write(json.dumps([*key, arrived]) + "\t" + line + "\n")
    return Path(name)


def _read_chunk(handle: IO[str]) -> Iterator[tuple[tuple[str, ...], int, str]]:
    for line in handle:
        head, _, text = line.rstrip("\n").partition("\t")
        *key, arrived = json.loads(head)
        yield tuple(key), arrived, text


def store_sorted(records: Iterable[Mapping[str, Any]], name: str = "records") -> RecordFile:
    """Records that already arrive in `record_key` order (a pass over a sorted store), stored as they come."""
    return _write_store(scratch_directory(), name, (json.dumps(r, allow_nan=False) for r in records))


def _write_store(directory: Path, name: str, lines: Iterable[str], count: int | None = None) -> RecordFile:
    descriptor, path = tempfile.mkstemp(dir=directory, prefix=f".{name}-", suffix=".jsonl")
    written = 0
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(line + "\n")
            written += 1
    assert count is None or count == written, f"stored {written} records of {count}"
    return RecordFile(Path(path), written, owned=True)


RESULTS_OPENING = '"results": ['


def open_results_json(path: Path) -> tuple[dict[str, Any], RecordFile] | None:
    """A results JSON in `write_json`'s layout as (everything but the records, its records on disk),
    reading only the header and counting lines; None if the file is laid out otherwise (hand-made,
    pretty-printed), which the caller then reads whole."""
    with path.open("rb") as handle:
        header_text = b""
        for raw in handle:
            if raw.strip() == RESULTS_OPENING.encode():
                break
            header_text += raw
            if len(header_text) > 64 << 20:  # not ours: our headers are small
                return None
        else:
            return None
        start = handle.tell()
        count = 0
        closed = False
        for raw in handle:
            stripped = raw.strip()
            if stripped == b"]":
                closed = True
                break
            if not stripped.startswith(b"{"):
                return None
            count += 1
        tail = handle.read().strip()
    if not closed or tail != b"}":
        return None
    try:
        header = json.loads(header_text.decode("utf-8").rstrip().rstrip(",") + "}")
    except ValueError:
        return None
    return (header, RecordFile(path, count, start)) if isinstance(header, dict) else None
