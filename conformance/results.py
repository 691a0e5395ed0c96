"""Result records on disk: streamed as they arrive, then one JSON file written atomically.

`results.json` is the source of truth (format: docs/results-format.md). While a run is going, each
record is appended and flushed to `<name>.jsonl` beside it, so a run killed half-way still leaves
every finished result readable.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from conformance import __version__, contracts, frameworks
from conformance.expectations import COUNTS, status_from_counts
from conformance.records import Record, observed

SCHEMA_VERSION = 1


TOOL = {"name": "dilated-conv-conformance", "version": __version__}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def base_environment() -> dict[str, Any]:
    """What can be known without importing any framework (cheap: read from package metadata), for
    every framework known to this process (conformance/frameworks.py)."""
    known = frameworks.known()
    packages = {}
    for name in dict.fromkeys(package for framework in known for package in framework.packages):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        "framework_versions": frameworks.installed_versions(known),
        "frameworks": {},
    }


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename over the target."""
    atomic_write(path, lambda handle: handle.write(text))


def write_json(document: dict[str, Any], handle: IO[str]) -> None:
    """The document with its header indented and each result on one line of its own: grep and line
    diffs see one record per line, and the C encoder writes 100,000 records in about a second
    (pretty-printing them all took minutes of the pure-Python one)."""
    header = json.dumps({k: v for k, v in document.items() if k != "results"}, indent=1, allow_nan=False)
    opening = header[: header.rindex("}")].rstrip()
    handle.write(opening + ("," if opening != "{" else "") + '\n "results": [')
    for number, record in enumerate(document.get("results", [])):
        handle.write(("," if number else "") + "\n  " + json.dumps(record, allow_nan=False))
    handle.write("\n ]\n}\n")


def atomic_write(path: Path, write: Callable[[IO[str]], object]) -> None:
    """`atomic_write_text` for a writer that streams (a 100,000-result document is not built as one string)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(descriptor, 0o644)  # mkstemp makes it private; a report is for reading
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def result_key(record: Mapping[str, Any]) -> tuple[str, str, str]:
    return (record["case"], record["target"], record["dtype"])


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    by_target: dict[str, Counter[str]] = {}
    for record in records:
        by_target.setdefault(record["target"], Counter())[record["outcome"]] += 1
    return {
        "total": len(records),
        "by_outcome": dict(sorted(Counter(r["outcome"] for r in records).items())),
        "by_target": {t: dict(sorted(c.items())) for t, c in sorted(by_target.items())},
    }


class ResultsWriter:
    """Collects records on the controller; streams each one to JSONL, writes JSON at the end.

    The stream starts with a `run` line (when, what command, which machine) and ends with an
    `end` line once the JSON is complete, so a stream without `end` is from a run that was killed.
    A new run never overwrites such a stream: it is kept beside as `<name>.interrupted-<time>.jsonl`.
    """

    def __init__(self, json_path: Path, command: list[str] | None = None) -> None:
        self.json_path = json_path
        self.stream_path = json_path.with_suffix(".jsonl")
        self.command = command or []
        self.records: list[Record] = []
        self.case_errors: list[dict[str, Any]] = []
        self.preserved: Path | None = None  # an earlier, interrupted run's stream, kept
        self._stream: IO[str] | None = None

    def _open_stream(self) -> IO[str]:
        if self._stream is None:
            self.stream_path.parent.mkdir(parents=True, exist_ok=True)
            self.preserved = preserve_interrupted(self.stream_path)
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

    def _append(self, kind: str, record: Mapping[str, Any]) -> None:
        self._open_stream()
        self._write_line({"kind": kind, **record})

    def add(self, record: Record) -> None:
        self.records.append(record)
        self._append("result", record)

    def add_case_error(self, error: dict[str, Any]) -> None:
        if error not in self.case_errors:
            self.case_errors.append(error)
            self._append("case_error", error)

    def document(
        self,
        environment: dict[str, Any],
        command: list[str],
        expectations: list[dict[str, Any]] | None = None,
        contracts: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        records = sorted(self.records, key=result_key)
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": TOOL,
            "created": _now(),
            "command": command,
            "environment": environment,
            "summary": summarize(records),
            "case_errors": self.case_errors,
            "expectations": expectations or [],
            "contracts": contracts or [],
            "results": records,
        }

    def finish(
        self,
        environment: dict[str, Any],
        command: list[str],
        expectations: list[dict[str, Any]] | None = None,
        contracts: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        document = self.document(environment, command, expectations, contracts)
        atomic_write(self.json_path, lambda handle: write_json(document, handle))
        if self._stream is not None:
            self._write_line({"kind": "end", "results": len(self.records), "json": self.json_path.name})
            self._stream.close()
            self._stream = None
        return document


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


def read_stream(path: Path) -> dict[str, Any]:
    """A results document from a `.jsonl` stream, complete or cut off by a kill.

    A torn last line (the process died while writing it) is dropped; a bad line anywhere else
    means the file is not one of ours and is refused, naming the line.
    """
    header: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    case_errors: list[dict[str, Any]] = []
    ended = False
    torn = 0
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            if number >= len(lines) - 1:  # the last line, cut off mid-write
                torn = 1
                continue
            raise StreamError(f"{path}:{number}: not a JSON line of a results stream") from None
        kind = entry.pop("kind", None) if isinstance(entry, dict) else None
        if kind == "run":
            header = entry
        elif kind == "result":
            records.append(entry)
        elif kind == "case_error":
            case_errors.append(entry)
        elif kind == "end":
            ended = True
        else:
            raise StreamError(f"{path}:{number}: unknown line kind {kind!r}")
    records.sort(key=result_key)
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
        "interrupted": None if ended else {"stream": path.name, "results": len(records), "torn_lines": torn},
    }


def run_label(environment: dict[str, Any]) -> str:
    """A short name for a run: its machine and the framework versions it ran."""
    versions = environment.get("framework_versions")
    if versions is None:  # results written before frameworks were recorded by name: read the packages
        packages = environment.get("packages", {})
        versions = {
            framework.name: packages[found]
            for framework in frameworks.known()
            if (found := next((d for d in framework.distributions if d in packages), None))
        }
    versions = frameworks.versions_line(versions)
    gpus = [
        d
        for info in environment.get("frameworks", {}).values()
        for d in info.get("devices", [])
        if "cpu" not in str(d).lower()
    ]
    return f"{environment.get('cpu', '?')}{' + ' + gpus[0] if gpus else ''}; {versions}".strip()


def runs_of(document: dict[str, Any], label: str | None = None) -> list[dict[str, Any]]:
    """The runs behind a document: one for a pytest run, several for a merged file."""
    if "runs" in document:
        runs: list[dict[str, Any]] = document["runs"]
        return runs
    environment = document.get("environment", {})
    return [
        {
            "label": label or run_label(environment),
            "environment": environment,
            "command": document.get("command", []),
            "created": document.get("created"),
            "summary": document.get("summary", {}),
            "interrupted": document.get("interrupted"),
        }
    ]


# Worst last: when merged runs disagree on a result, the matrix shows the worse one (and lists the conflict).
SEVERITY = (
    "skip", "unsupported", "pass", "expected-error", "xfail", "xpass",
    "nondeterministic", "contract", "mismatch", "shape", "missing-error", "error", "timeout", "crash",
)  # fmt: skip


def merge(documents: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One document from several runs (shards, machines, framework versions).

    Results are keyed by case, target, dtype and framework version, so each version gets its own
    column. A result that was not run (skip) gives way to a run of the same check elsewhere, e.g.
    the GPU targets that a CPU machine skipped. Two runs that evaluated the same key differently
    are kept as the worse one and listed under `conflicts`.
    """
    runs: list[dict[str, Any]] = []
    chosen: dict[tuple[Any, ...], dict[str, Any]] = {}
    disagreements: dict[tuple[Any, ...], dict[str, str]] = {}
    case_errors: list[dict[str, Any]] = []
    known: dict[str, dict[str, Any]] = {}
    for source, document in documents:
        offset = len(runs)
        for run in runs_of(document, source):
            runs.append({**run, "source": run.get("source", source)})
        for record in document["results"]:
            record = {**record, "run": offset + record.get("run", 0)}
            key = (*result_key(record), record.get("framework_version"))
            kept = chosen.get(key)
            if kept is None or (kept["outcome"] == "skip" and record["outcome"] != "skip"):
                chosen[key] = record
            elif record["outcome"] != "skip" and observed(record) != observed(kept):
                seen = disagreements.setdefault(key, {runs[kept["run"]]["label"]: observed(kept)})
                seen[runs[record["run"]]["label"]] = observed(record)
                if SEVERITY.index(record["outcome"]) > SEVERITY.index(kept["outcome"]):
                    chosen[key] = record
        case_errors += [e for e in document.get("case_errors", []) if e not in case_errors]
        for entry in document.get("expectations", []):
            total = known.setdefault(entry["id"], {**entry, **dict.fromkeys(COUNTS, 0)})
            for count in COUNTS:
                total[count] += entry.get(count, 0)
    evaluated = {result_key(r) for r in chosen.values() if r["outcome"] != "skip"}
    records = [r for r in chosen.values() if r["outcome"] != "skip" or result_key(r) not in evaluated]
    records.sort(key=lambda r: (*result_key(r), r.get("framework_version") or ""))
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "merged",
        "tool": TOOL,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runs": runs,
        "summary": summarize(records),
        "case_errors": case_errors,
        "expectations": [{**e, "status": status_from_counts(e)} for e in known.values()],
        # Each contract once, as the first run stated it, tallied again over the merged records.
        "contracts": contracts.tally((c for d in documents for c in d[1].get("contracts", [])), records),
        "conflicts": [
            {
                "case": k[0],
                "target": k[1],
                "dtype": k[2],
                "framework_version": k[3],
                "outcomes": [{"run": run, "outcome": outcome} for run, outcome in v.items()],
            }
            for k, v in sorted(disagreements.items(), key=lambda kv: tuple(str(p) for p in kv[0]))
        ],
        "results": records,
    }
