"""Records on disk: sorted without holding them, and read back one at a time.

A run of 10^6 checks makes about 2 GB of records, 20-30 GB as Python objects. Nothing that writes
results (the controller's results JSON, `merge`, the report) holds them: records are sorted in
chunks that are merged from disk (`sort_records`), and what is made of them is built by passes over
a `RecordFile`, which any number of readers iterate, each holding one record at a time.
"""

from __future__ import annotations

import atexit
import bisect
import heapq
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any

from conformance.records import edition

# Records per sorted chunk: about 40 MB of JSON text in memory while one is sorted.
CHUNK = 20_000


def record_key(record: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """The order of records in every results file: case, target, dtype, then framework version and
    profile (a merged file holds one record per version and profile: `records.edition`)."""
    return (record["case"], record["target"], record["dtype"], edition(record))


_fast_loads: Callable[[str | bytes], Any] | None
try:  # a third of json.loads' time on records; optional, for the same dicts (records hold no NaN, no huge ints)
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - the suite runs without it (e.g. a GPU image without it)
    _fast_loads = None
_fast_dumps: Callable[..., bytes] | None
try:
    from orjson import OPT_NON_STR_KEYS as _NON_STR_KEYS
    from orjson import dumps as _fast_dumps
except ImportError:  # pragma: no cover
    _fast_dumps, _NON_STR_KEYS = None, 0


def parse_record(text: str | bytes) -> dict[str, Any]:
    """A record from its JSON text (orjson where it is installed: reading records back is most of
    what a large run's end, `merge`, `diff` and `report` do)."""
    if _fast_loads is not None:
        try:
            return _fast_loads(text)  # type: ignore[no-any-return]
        except ValueError:
            # orjson refuses a lone surrogate ("\udcff": an OS path or message decoded with
            # surrogateescape), which json.dumps writes and json.loads reads.
            pass
    record: dict[str, Any] = json.loads(text)
    return record


def _orjson(value: Any, option: int = 0) -> bytes | None:
    """orjson's JSON of `value`, or None where orjson is not installed or refuses it (a lone
    surrogate, an integer beyond 64 bits): the caller then asks json."""
    if _fast_dumps is None:
        return None
    try:
        return _fast_dumps(value, option=option)
    except TypeError:  # (orjson.JSONEncodeError is one)
        return None


def record_text(record: Mapping[str, Any]) -> str:
    """A record's JSON text, as every file of results holds it, made once per check in its worker:
    orjson's where it is installed (compact, UTF-8; a tenth of json's 30 us on a large-tier record),
    json's for what orjson refuses. Both parse to the same record. NaN and infinities are never
    numbers in a record (`worst` spells them as strings; the figures are maxima over finite values):
    were one to slip in, json would refuse it and orjson write null, no figure rather than a false one."""
    fast = _orjson(record)
    return fast.decode() if fast is not None else _RECORD_ENCODER.encode(record)


def scratch_json(value: Any) -> bytes:
    """JSON for the files only the suite's own processes read back, a worker's state and its batch's
    journal, written before every check: as `record_text`, in bytes."""
    fast = _orjson(value)
    return fast if fast is not None else json.dumps(value).encode()


def compact_json(value: Any) -> str:
    """`json.dumps(value, separators=(",", ":"), allow_nan=False)`'s value, from orjson where it is
    installed (a report's rows: a large run's end writes one per case and dtype); integer keys are
    written as strings, as json writes them, and a NaN, which no record holds, as null (`record_text`)."""
    fast = _orjson(value, _NON_STR_KEYS)
    return fast.decode() if fast is not None else json.dumps(value, separators=(",", ":"), allow_nan=False)


# json.dumps(record, allow_nan=False)'s text from one encoder: dumps makes an encoder per call for
# any non-default argument, and a record holds no cycles to look for (a third faster per record).
_RECORD_ENCODER = json.JSONEncoder(allow_nan=False, check_circular=False)


# A record as it travels from a worker to the controller: its key, and its text, serialised once in
# the worker; the controller spills and streams the text unparsed.
WireRecord = tuple[tuple[str, str, str, str], str]


def wire_record(record: Mapping[str, Any]) -> WireRecord:
    return record_key(record), record_text(record)


# A report carries all its records as one string: a JSON header of each record's key and text
# length, a newline (the header's JSON has none), then the texts. xdist's serialiser walks every
# object of a report in Python, about 20 us a record sent as five strings and received; one string
# is one object.
def to_wire(records: Iterable[WireRecord]) -> str:
    header: list[list[str | int]] = []
    texts: list[str] = []
    for key, text in records:
        header.append([*key, len(text)])
        texts.append(text)
    return json.dumps(header) + "\n" + "".join(texts)


def from_wire(value: object) -> list[WireRecord]:
    """The records (key, text) a report carried, in the order they were put on it."""
    assert isinstance(value, str) and "\n" in value, f"not records on the wire: {value!r:.200}"
    newline = value.index("\n")
    header = json.loads(value[:newline])
    records: list[WireRecord] = []
    start = newline + 1
    for case, target, dtype, version, length in header:
        records.append(((case, target, dtype, version), value[start : start + length]))
        start += length
    assert start == len(value), f"not records on the wire: {len(value) - start} characters left over"
    return records


class RecordFile:
    """Records as JSON lines, in `record_key` order: iterable again and again, never held.

    `lines` is where the records start and how their lines are written: the `"results": [` block of
    a results JSON (`results.write_json`'s layout: one record per line, indented, commas at the
    ends), in a sorted store alone (`block`: the file is that block and nothing else, so a results
    JSON copies it as it is) or followed by the JSON's `]`.
    """

    def __init__(self, path: Path, count: int, start: int = 0, *, owned: bool = False, block: bool = False) -> None:
        self.path = path
        self.count = count
        self.start = start  # byte offset of the first record's line
        self.owned = owned  # a temporary store, removed by `discard`
        self.block = block  # the whole file is the results block (`RESULTS_BLOCK_INDENT`, a newline after the last)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for line in self.lines():
            yield parse_record(line)

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


class SortedSpill:
    """Records sorted as they arrive, in memory up to `CHUNK` and then in sorted chunks on disk:
    `lines()` merges them into `record_key` order, keeping arrival order among equal keys.

    Whoever adds a record says its key and JSON text, so nothing is parsed or serialised here:
    the controller spills workers' records as they come (their text is what the worker wrote),
    and only the chunks' merge is left for the end of the run. Each chunk keeps its blocks' first
    keys, so a run of cases (`between`) is read without reading the chunks' other blocks: a run's
    end is a pass in parts, each part a run of cases (`case_bounds`; conformance/record_passes.py).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory  # (made when the first chunk is written; by default the scratch directory)
        self.count = 0
        self._buffer: list[tuple[tuple[str, ...], int, str]] = []
        self._chunks: list[_Chunk] = []

    def add(self, key: tuple[str, ...], text: str) -> None:
        self._buffer.append((key, self.count, text))
        self.count += 1
        if len(self._buffer) >= CHUNK:
            self._chunks.append(_write_chunk(self._buffer, self._made_directory()))
            self._buffer = []

    def _made_directory(self) -> Path:
        directory = self.directory or scratch_directory()
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def lines(self) -> Iterator[str]:
        """Every record's text in order (once: the chunks are removed as the merge ends)."""
        try:
            yield from self.between(None, None)
        finally:
            self.discard()

    def between(self, low: str | None, high: str | None) -> Iterator[str]:
        """The texts, in order, of the records whose case is from `low` (None: the first) up to
        `high`, not included (None: past the last). The chunks stay: other parts read them too."""
        self._buffer.sort()
        start = 0 if low is None else bisect.bisect_left(self._buffer, ((low,),))
        end = len(self._buffer) if high is None else bisect.bisect_left(self._buffer, ((high,),))
        handles: list[IO[bytes]] = []
        try:
            for chunk in self._chunks:
                handles.append(chunk.path.open("rb"))
            ranges = [
                _read_chunk(handle, chunk, low, high) for handle, chunk in zip(handles, self._chunks, strict=True)
            ]
            for *_, text in heapq.merge(*ranges, iter(self._buffer[start:end])):
                yield text
        finally:
            for handle in handles:
                handle.close()

    def case_bounds(self, parts: int) -> list[str]:
        """Up to `parts - 1` cases, in order, that cut the records into runs of whole cases about
        equal in number: each starts a part (`between`). Fewer where a case is larger than a part."""
        self._buffer.sort()
        # (each block's first key stands for its records; the buffer, for blocks of its own)
        samples = [sample for chunk in self._chunks for sample in zip(chunk.firsts, chunk.sizes, strict=True)]
        buffered = len(self._buffer)
        samples += [(self._buffer[i][0], min(CHUNK_BLOCK, buffered - i)) for i in range(0, buffered, CHUNK_BLOCK)]
        samples.sort()
        total = sum(size for _, size in samples)
        bounds: list[str] = []
        seen = 0
        for first, size in samples:
            if seen >= total * (len(bounds) + 1) / parts and first[0] > (bounds[-1] if bounds else samples[0][0][0]):
                bounds.append(first[0])
                if len(bounds) == parts - 1:
                    break
            seen += size
        return bounds

    def store(self, name: str = "records") -> RecordFile:
        """The records, in order, as a store in the same directory (removed by its `discard`)."""
        return _write_store(self._made_directory(), name, self.lines(), self.count)

    def discard(self) -> None:
        for chunk in self._chunks:
            chunk.path.unlink(missing_ok=True)
        self._chunks, self._buffer = [], []


def sort_records(
    records: Iterable[Mapping[str, Any]], directory: Path | None = None, name: str = "records"
) -> RecordFile:
    """`records` in `record_key` order, in a new file in `directory` (by default this process's
    scratch directory; removed by `discard` or when the process exits): an external sort
    (`SortedSpill`) that holds at most `CHUNK` records."""
    spill = SortedSpill(directory)
    try:
        for record in records:
            # (not `record_text`: a hand-made file read by `diff` or `report` may hold NaN, which
            # json.loads accepted; the sorted copy is scratch, and `parse_record` reads it back)
            spill.add(record_key(record), json.dumps(record))
        return spill.store(name)
    finally:
        spill.discard()


# Entries per pickled block of a chunk: a merge holds one block of each chunk (about 1.5 MB of text).
CHUNK_BLOCK = 500


@dataclass(frozen=True)
class _Chunk:
    """A sorted chunk on disk, pickled in blocks, and where each block starts: its first key, its
    size and its byte offset."""

    path: Path
    firsts: list[tuple[str, ...]]
    sizes: list[int]
    offsets: list[int]


def _write_chunk(buffer: list[tuple[tuple[str, ...], int, str]], directory: Path) -> _Chunk:
    """A sorted chunk, pickled in blocks: read back without parsing any JSON (keys are tuples)."""
    buffer.sort()
    descriptor, name = tempfile.mkstemp(dir=directory, prefix=".chunk-", suffix=".pickle")
    chunk = _Chunk(Path(name), [], [], [])
    with os.fdopen(descriptor, "wb") as handle:
        for start in range(0, len(buffer), CHUNK_BLOCK):
            block = buffer[start : start + CHUNK_BLOCK]
            chunk.firsts.append(block[0][0])
            chunk.sizes.append(len(block))
            chunk.offsets.append(handle.tell())
            pickle.dump(block, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return chunk


def _read_chunk(
    handle: IO[bytes], chunk: _Chunk, low: str | None, high: str | None
) -> Iterator[tuple[tuple[str, ...], int, str]]:
    """A chunk's entries whose case is from `low` up to `high` (not included), from the block that
    may hold the first of them."""
    first_block = 0 if low is None else max(0, bisect.bisect_left(chunk.firsts, (low,)) - 1)
    if first_block >= len(chunk.offsets):
        return
    handle.seek(chunk.offsets[first_block])
    while True:
        try:
            block = pickle.load(handle)
        except EOFError:
            return
        for entry in block:
            case = entry[0][0]
            if high is not None and case >= high:
                return
            if low is None or case >= low:
                yield entry


def store_sorted(records: Iterable[Mapping[str, Any]], name: str = "records") -> RecordFile:
    """Records that already arrive in `record_key` order (a pass over a sorted store), stored as they come."""
    return _write_store(scratch_directory(), name, (record_text(r) for r in records))


def fold_into_store(
    lines: Iterable[str],
    consumers: list[Callable[[dict[str, Any]], object]],
    directory: Path | None = None,
    count: int | None = None,
    name: str = "records",
) -> RecordFile:
    """Records' texts, already in order, written to a new store; with `consumers`, each record is
    also parsed once and handed to every one of them (everything a run's end makes of its records,
    in the pass that stores them)."""

    def handed(texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            record = parse_record(text)
            for consume in consumers:
                consume(record)
            yield text

    directory = directory or scratch_directory()
    directory.mkdir(parents=True, exist_ok=True)
    return _write_store(directory, name, handed(lines) if consumers else lines, count)


def _write_store(directory: Path, name: str, lines: Iterable[str], count: int | None = None) -> RecordFile:
    """The records' lines as a results JSON's block (`RecordFile.block`): the JSON made of them at a
    run's end copies the store's bytes instead of reading and writing each line again."""
    descriptor, path = tempfile.mkstemp(dir=directory, prefix=f".{name}-", suffix=".jsonl")
    written = 0
    separator = ",\n" + RESULTS_BLOCK_INDENT
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            lines = iter(lines)
            while block := list(islice(lines, 1000)):  # (one write per line costs more than the line)
                handle.write((separator if written else RESULTS_BLOCK_INDENT) + separator.join(block))
                written += len(block)
            if written:
                handle.write("\n")
    except BaseException:  # (what made the lines raised, or the pass was stopped)
        Path(path).unlink(missing_ok=True)
        raise
    assert count is None or count == written, f"stored {written} records of {count}"
    return RecordFile(Path(path), written, owned=True, block=True)


def copy_bytes(source: IO[bytes], target: IO[Any]) -> None:
    """The rest of `source` written at `target`'s position (a binary or text file, flushed first),
    copied by the kernel where it can: a large run's results JSON copies its 400 MB store, which
    decoding and encoding again took 0.3 s of. `target`'s own `tell` is not to be trusted after."""
    target.flush()
    for kernel_copy in (_copy_file_range, _sendfile):
        copied = 0
        try:
            while step := kernel_copy(source.fileno(), target.fileno()):
                copied += step
            return
        except (OSError, AttributeError):  # (AttributeError: no such call on this system)
            if copied:  # (partly copied: not a missing system call, a real error)
                raise
    # (no kernel copy between these files: through this process)
    shutil.copyfileobj(source, getattr(target, "buffer", target), 1 << 20)


def _copy_file_range(source: int, target: int) -> int:
    return os.copy_file_range(source, target, 1 << 30)


def _sendfile(source: int, target: int) -> int:
    return os.sendfile(target, source, None, 1 << 30)


RESULTS_OPENING = '"results": ['
RESULTS_BLOCK_INDENT = "  "  # (each record's line in a results JSON: `results.write_json`)


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
