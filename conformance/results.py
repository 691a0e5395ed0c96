"""Result records on disk: streamed as they arrive, then one JSON file written atomically.

`results.json` is the source of truth (format: docs/results-format.md). While a run is going, each
record is appended and flushed to `<name>.jsonl` beside it, so a run killed half-way still leaves
every finished result readable.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import glob
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar

from conformance import __version__
from conformance.record_files import (
    RESULTS_BLOCK_INDENT,
    RESULTS_OPENING,
    RecordFile,
    SortedSpill,
    copy_bytes,
    open_results_json,
    record_key,
    record_text,
    scratch_directory,
    sort_records,
)
from conformance.record_passes import Fold, fold_in_parts
from conformance.run_environment import base_environment

_T = TypeVar("_T")

SCHEMA_VERSION = 1


TOOL = {"name": "dilated-conv-conformance", "version": __version__}


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename over the target."""
    atomic_write(path, lambda handle: handle.write(text))


def write_json(document: dict[str, Any], handle: IO[str]) -> int:
    """The document with its header indented and each result on one line of its own: grep and line
    diffs see one record per line, the C encoder writes 100,000 records in about a second
    (pretty-printing them all took minutes of the pure-Python one), and `open_results_json` reads
    the records back one at a time. Returns the byte offset of the first record's line."""
    header = json.dumps({k: v for k, v in document.items() if k != "results"}, indent=1, allow_nan=False)
    opening = header[: header.rindex("}")].rstrip()
    opening += ("," if opening != "{" else "") + "\n " + RESULTS_OPENING
    handle.write(opening)
    records = document.get("results", [])
    if isinstance(records, RecordFile) and records.block:  # (a sorted store is this block already)
        handle.write("\n")
        with records.path.open("rb") as block:
            copy_bytes(block, handle)
        handle.write(" ]\n}\n")
        return len(opening.encode("utf-8")) + 1
    lines = records.lines() if isinstance(records, RecordFile) else (json.dumps(r, allow_nan=False) for r in records)
    for number, line in enumerate(lines):
        handle.write(("," if number else "") + "\n" + RESULTS_BLOCK_INDENT + line)
    handle.write("\n ]\n}\n")
    return len(opening.encode("utf-8")) + 1


def atomic_write(path: Path, write: Callable[[IO[str]], object]) -> None:
    """`atomic_write_text` for a writer that streams (a 100,000-result document is not built as one string)."""
    atomic_write_returning(path, write)


def atomic_write_returning(path: Path, write: Callable[[IO[str]], _T]) -> _T:
    """`atomic_write`, returning what `write` returned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(descriptor, 0o644)  # mkstemp makes it private; a report is for reading
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            returned = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        return returned
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def result_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    return (record["case"], record["target"], record["dtype"])


class Summary:
    """Counts by outcome and by target, one record at a time (records are read as they go)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}  # (target, outcome) -> checks

    def add(self, record: Mapping[str, Any]) -> None:
        key = (record["target"], record["outcome"])
        self.counts[key] = self.counts.get(key, 0) + 1

    def merge(self, later: Summary) -> None:
        for key, count in later.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count

    def as_dict(self) -> dict[str, Any]:
        by_target: dict[str, Counter[str]] = {}
        by_outcome: Counter[str] = Counter()
        for (target, outcome), count in self.counts.items():
            by_target.setdefault(target, Counter())[outcome] += count
            by_outcome[outcome] += count
        return {
            "total": sum(by_outcome.values()),
            "by_outcome": dict(sorted(by_outcome.items())),
            "by_target": {t: dict(sorted(c.items())) for t, c in sorted(by_target.items())},
        }


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    summary = Summary()
    for record in records:
        summary.add(record)
    return summary.as_dict()


class ResultsWriter:
    """Streams the controller's records to JSONL as they arrive; writes the JSON from the stream at the end.

    The stream is the store: no record is held in memory. The stream starts with a `run` line (when,
    what command, which machine) and ends with an `end` line once the JSON is complete, so a stream
    without `end` is from a run that was killed. A new run never overwrites such a stream: it is
    kept beside as `<name>.interrupted-<time>.jsonl`.
    """

    def __init__(self, json_path: Path, command: list[str] | None = None) -> None:
        self.json_path = json_path
        self.stream_path = json_path.with_suffix(".jsonl")
        self.command = command or []
        self.count = 0  # records streamed
        self.case_errors: list[dict[str, Any]] = []
        self.preserved: Path | None = None  # an earlier, interrupted run's stream, kept
        self._stream: IO[str] | None = None
        # The records again, sorted as they come (the stream keeps arrival order, for a killed run),
        # in a directory of this run's beside the JSON (made with the stream; see `claim_spill`).
        self.spill_directory: Path | None = None
        self._spill_lock: IO[bytes] | None = None
        self._spill = SortedSpill()

    def _open_stream(self) -> IO[str]:
        if self._stream is None:
            self.stream_path.parent.mkdir(parents=True, exist_ok=True)
            self.preserved = preserve_interrupted(self.stream_path)
            remove_abandoned_spills(self.json_path)
            self.spill_directory, self._spill_lock = claim_spill(self.json_path)
            self._spill.directory = self.spill_directory
            self._stream = self.stream_path.open("w", encoding="utf-8")
            self._write_line({
                "kind": "run",
                "schema_version": SCHEMA_VERSION,
                "tool": TOOL,
                "created": _now(),
                "command": self.command,
                "environment": base_environment(),
            })  # fmt: skip
        return self._stream

    def _write_line(self, entry: dict[str, Any]) -> None:
        assert self._stream is not None
        # One write of one whole line, flushed: a kill leaves at most the last line torn.
        self._stream.write(json.dumps(entry, allow_nan=False) + "\n")
        self._stream.flush()

    def add(self, record: Mapping[str, Any]) -> None:
        self.add_text(record_key(record), record_text(record))

    def add_text(self, key: tuple[str, ...], text: str, *, flush: bool = True) -> None:
        """A record as its key and JSON text (how workers send them): streamed and spilled as it is.
        `flush=False` for all but the last of the records that arrived together."""
        stream = self._open_stream()
        # (a record's text is an object with keys: the kind goes first, inside its braces)
        stream.write('{"kind": "result", ' + text[1:] + "\n")
        if flush:
            stream.flush()
        self._spill.add(key, text)
        self.count += 1

    def add_case_error(self, error: dict[str, Any]) -> None:
        if error not in self.case_errors:
            self.case_errors.append(error)
            self._open_stream()
            self._write_line({"kind": "case_error", **error})

    def sorted_records(self, folds: Sequence[Fold] = (), parts: int | None = 1) -> RecordFile:
        """The records added so far, in results order, in a store beside the JSON (discard it after),
        each handed to every one of `folds` on the way: a run's end reads its records once, in up
        to `parts` parts (None: one per usable core; conformance/record_passes.py)."""
        return fold_in_parts(self._spill, folds, self.spill_directory or scratch_directory(), parts)

    def finish(
        self,
        environment: dict[str, Any],
        command: list[str],
        expectations: list[dict[str, Any]] | None = None,
        contracts: list[dict[str, Any]] | None = None,
        records: RecordFile | None = None,
        summary: dict[str, Any] | None = None,
        *,
        keep_spill: bool = False,
        interrupted: dict[str, Any] | None = None,
        alongside: Callable[[dict[str, Any]], object] | None = None,
    ) -> dict[str, Any]:
        """Write the results JSON and close the stream. `records` (with their `summary`) from
        `sorted_records`; by default they are sorted and summarised here. The document returned
        reads its records from the JSON just written. The spill directory is removed, unless
        `keep_spill` (the caller still has scratch files there, and calls `close`). `interrupted`:
        a run stopped before its end (by a signal), as a stream cut off by a kill is marked.
        `alongside` is called with the document (its records still the store's) while the JSON
        is written in a thread: its copy and its fsync wait on the kernel, not on this process."""
        if records is None:
            counts = Summary()
            ordered = self.sorted_records([counts])
            summary = counts.as_dict()
        else:
            ordered = records
        document = {
            "schema_version": SCHEMA_VERSION,
            "tool": TOOL,
            "created": _now(),
            "command": command,
            "environment": environment,
            "summary": summary if summary is not None else summarize(ordered),
            "case_errors": self.case_errors,
            "expectations": expectations or [],
            "contracts": contracts or [],
            "results": ordered,
        }
        if interrupted is not None:
            document["interrupted"] = interrupted
        if alongside is None:
            start = atomic_write_returning(self.json_path, lambda handle: write_json(document, handle))
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="conformance-results") as pool:
                written = pool.submit(atomic_write_returning, self.json_path, lambda h: write_json(document, h))
                alongside(document)  # (if it raises, the JSON is still written whole first)
                start = written.result()
        if records is None:
            ordered.discard()
        document["results"] = RecordFile(self.json_path, len(ordered), start)
        if self._stream is not None:
            self._write_line({"kind": "end", "results": self.count, "json": self.json_path.name})
            self._stream.close()
            self._stream = None
        if not keep_spill:
            self.close()
        return document

    def close(self) -> None:
        """Remove this run's spill directory (whatever is still in it) and release its lock."""
        if self.spill_directory is not None:
            shutil.rmtree(self.spill_directory, ignore_errors=True)
        if self._spill_lock is not None:
            self._spill_lock.close()
            self._spill_lock = None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _stream_ended(path: Path) -> bool:
    """Whether the stream's last line is its `end` marker (read from the tail: streams can be large)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 4096))
        lines = handle.read().splitlines()
    try:
        return bool(lines) and json.loads(lines[-1]).get("kind") == "end"
    except ValueError:
        return False


# A run's spill directory holds a lock file, locked while the run lives: the kernel releases it when
# the process ends however it ends, so "abandoned" needs no pid (pids are reused, and mean nothing
# to another host or container sharing the directory).
SPILL_LOCK = ".lock"


def claim_spill(json_path: Path) -> tuple[Path, IO[bytes]]:
    """A new spill directory beside `json_path` and its lock, held until the handle is closed.
    Made under another name and renamed once locked, so no run ever sees one unlocked while alive."""
    prefix = f".{json_path.stem}.making-"
    making = Path(tempfile.mkdtemp(prefix=prefix, dir=json_path.parent))
    lock = (making / SPILL_LOCK).open("wb")
    # (on a file system without locks nobody can take it either, so nobody removes the directory)
    with contextlib.suppress(OSError):
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    directory = making.with_name(f".{json_path.stem}.spill-{making.name[len(prefix) :]}")
    making.rename(directory)
    return directory, lock


def remove_abandoned_spills(json_path: Path) -> None:
    """The spill directories of runs that wrote here and were killed: those whose lock nobody holds."""
    for directory in json_path.parent.glob(glob.escape(f".{json_path.stem}.spill-") + "*"):
        try:
            with (directory / SPILL_LOCK).open("rb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run's
        except FileNotFoundError:
            pass  # (an older version's, which had no lock: its run is long over)
        except OSError:
            continue  # unreadable: not ours to remove
        shutil.rmtree(directory, ignore_errors=True)


def preserve_interrupted(stream_path: Path) -> Path | None:
    """Move aside the stream of a run that never finished, so its results are not overwritten."""
    if not stream_path.exists() or stream_path.stat().st_size == 0 or _stream_ended(stream_path):
        return None
    stamp = datetime.datetime.fromtimestamp(stream_path.stat().st_mtime, datetime.UTC).strftime("%Y%m%dT%H%M%S")
    kept = stream_path.with_name(f"{stream_path.stem}.interrupted-{stamp}.jsonl")
    os.replace(stream_path, kept)
    return kept


class StreamError(ValueError):
    pass


def stream_entries(
    path: Path, kind: str | None = None, state: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """A stream's lines as entries (with their `kind`, or only those of `kind`, without it), read as they go.

    A torn last line (the process died while writing it) is dropped and counted in `state`; a bad
    line anywhere else means the file is not one of ours and is refused, naming the line. `state`
    also learns whether the stream `ended`.
    """
    state = state if state is not None else {}
    state.update(torn_lines=0, ended=False)
    with path.open("rb") as handle:
        pending: tuple[int, bytes] | None = None  # a line is judged once the next is seen (the last may be torn)
        for number, raw in enumerate(handle, start=1):
            if pending is not None:
                yield from _stream_entry(path, *pending, kind, state, last=False)
            pending = (number, raw)
        if pending is not None:
            yield from _stream_entry(path, *pending, kind, state, last=True)


def _stream_entry(
    path: Path, number: int, raw: bytes, kind: str | None, state: dict[str, Any], *, last: bool
) -> Iterator[dict[str, Any]]:
    line = raw.decode("utf-8", errors="replace")
    if not line.strip():
        return
    try:
        entry = json.loads(line)
    except ValueError:
        if last:  # cut off mid-write
            state["torn_lines"] = 1
            return
        raise StreamError(f"{path}:{number}: not a JSON line of a results stream") from None
    found = entry.get("kind") if isinstance(entry, dict) else None
    if found not in ("run", "result", "case_error", "end"):
        raise StreamError(f"{path}:{number}: unknown line kind {found!r}")
    state["ended"] = state["ended"] or found == "end"
    if kind is None:
        yield entry
    elif found == kind:
        entry.pop("kind")
        yield entry


def read_stream(path: Path) -> dict[str, Any]:
    """A results document from a `.jsonl` stream, complete or cut off by a kill; its records sorted
    into a store (a document's results are iterated, never held)."""
    header: dict[str, Any] = {}
    case_errors: list[dict[str, Any]] = []
    state: dict[str, Any] = {}

    def results() -> Iterator[dict[str, Any]]:
        for entry in stream_entries(path, state=state):
            kind = entry.pop("kind")
            if kind == "result":
                yield entry
            elif kind == "run":
                header.update(entry)
            elif kind == "case_error":
                case_errors.append(entry)

    records = sort_records(results())
    return {
        "schema_version": header.get("schema_version", SCHEMA_VERSION),
        "tool": header.get("tool", TOOL),
        "created": header.get("created"),
        "command": header.get("command", []),
        "environment": header.get("environment", {}),
        "summary": summarize(records),
        "case_errors": case_errors,
        "expectations": [],
        "results": records,
        "interrupted": None
        if state["ended"]
        else {"stream": path.name, "results": len(records), "torn_lines": state["torn_lines"]},
    }


class ResultsFileError(ValueError):
    pass


def read_results(path: Path) -> dict[str, Any]:
    """A results file as a document: the final JSON, a merged file, or a `.jsonl` stream (also one
    cut off by a kill). Files in the suite's own layout are read one record at a time, as their
    records are used (`open_results_json`); others are read whole."""
    try:
        if path.suffix == ".jsonl":
            return read_stream(path)
        opened = open_results_json(path)
        if opened is not None:
            header, records = opened
            return {**header, "results": records}
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ResultsFileError(f"{path}: cannot read a results file: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("results"), list):
        raise ResultsFileError(f"{path}: not a results file (no 'results' list)")
    return document
