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
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from conformance import __version__

SCHEMA_VERSION = 1
FRAMEWORK_PACKAGES = ("numpy", "torch", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "ml_dtypes")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def base_environment() -> dict[str, Any]:
    """What can be known without importing any framework (cheap: read from package metadata)."""
    packages = {}
    for name in FRAMEWORK_PACKAGES:
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
        "frameworks": {},
    }


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.chmod(descriptor, 0o644)  # mkstemp makes it private; a report is for reading
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def result_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return (record["case"], record["target"], record["dtype"])


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    by_target: dict[str, Counter[str]] = {}
    for record in records:
        by_target.setdefault(record["target"], Counter())[record["outcome"]] += 1
    return {
        "total": len(records),
        "by_outcome": dict(sorted(Counter(r["outcome"] for r in records).items())),
        "by_target": {t: dict(sorted(c.items())) for t, c in sorted(by_target.items())},
    }


class ResultsWriter:
    """Collects records on the controller; streams each one to JSONL, writes JSON at the end."""

    def __init__(self, json_path: Path) -> None:
        self.json_path = json_path
        self.stream_path = json_path.with_suffix(".jsonl")
        self.records: list[dict[str, Any]] = []
        self.case_errors: list[dict[str, Any]] = []
        self._stream: IO[str] | None = None

    def _open_stream(self) -> IO[str]:
        if self._stream is None:
            self.stream_path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = self.stream_path.open("w", encoding="utf-8")
        return self._stream

    def _append(self, kind: str, record: dict[str, Any]) -> None:
        stream = self._open_stream()
        stream.write(json.dumps({"kind": kind, **record}) + "\n")
        stream.flush()

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._append("result", record)

    def add_case_error(self, error: dict[str, Any]) -> None:
        if error not in self.case_errors:
            self.case_errors.append(error)
            self._append("case_error", error)

    def document(self, environment: dict[str, Any], command: list[str]) -> dict[str, Any]:
        records = sorted(self.records, key=result_key)
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "dilated-conv-conformance", "version": __version__},
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": command,
            "environment": environment,
            "summary": summarize(records),
            "case_errors": self.case_errors,
            "results": records,
        }

    def finish(self, environment: dict[str, Any], command: list[str]) -> dict[str, Any]:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        document = self.document(environment, command)
        atomic_write_text(self.json_path, json.dumps(document, indent=1, allow_nan=False) + "\n")
        return document
