"""Merging runs (shards, machines, framework versions, profiles) into one results document."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from itertools import groupby
from typing import Any

from conformance import contracts
from conformance.expectations import COUNTS, status_from_counts
from conformance.record_files import RecordFile, sort_records, store_sorted
from conformance.records import edition, observed
from conformance.results import SCHEMA_VERSION, TOOL, Summary, result_key
from conformance.run_environment import run_label


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

    Results are keyed by case, target, dtype, framework version and machine profile (`edition`),
    so each version and profile gets its own column. A result that was not run (skip) gives way to
    a run of the same check elsewhere, e.g. the GPU targets that a CPU machine skipped. Two runs
    that evaluated the same key differently are kept as the worse one and listed under `conflicts`.

    The records are sorted on disk and chosen in one pass over them: merging holds one check's
    records at a time, whatever the size of the runs.
    """
    runs: list[dict[str, Any]] = []
    case_errors: list[dict[str, Any]] = []
    known: dict[str, dict[str, Any]] = {}
    disagreements: list[tuple[tuple[Any, ...], dict[str, str]]] = []

    def numbered() -> Iterator[dict[str, Any]]:
        for source, document in documents:
            offset = len(runs)
            for run in runs_of(document, source):
                runs.append({**run, "source": run.get("source", source)})
            for record in document["results"]:
                yield {**record, "run": offset + record.get("run", 0)}

    def chosen(ordered: RecordFile) -> Iterator[dict[str, Any]]:
        for _, check in groupby(ordered, key=result_key):
            kept: list[dict[str, Any]] = []  # one per framework version and profile, in the order runs were given
            for _, arrived in groupby(check, key=edition):
                kept.append(_choose(list(arrived)))
            evaluated = any(r["outcome"] != "skip" for r in kept)
            yield from (r for r in kept if r["outcome"] != "skip" or not evaluated)

    def _choose(arrived: list[dict[str, Any]]) -> dict[str, Any]:
        pick = arrived[0]
        seen: dict[str, str] = {}
        for record in arrived[1:]:
            if pick["outcome"] == "skip" and record["outcome"] != "skip":
                pick = record
            elif record["outcome"] != "skip" and observed(record) != observed(pick):
                seen.setdefault(runs[pick["run"]]["label"], observed(pick))
                seen[runs[record["run"]]["label"]] = observed(record)
                if SEVERITY.index(record["outcome"]) > SEVERITY.index(pick["outcome"]):
                    pick = record
        if seen:
            disagreements.append(((*result_key(pick), edition(pick)), seen))
        return pick

    ordered = sort_records(numbered())
    # Each contract once, as the first run stated it, tallied again over the merged records; the
    # counts and the tally are made in the pass that stores them.
    counts = Summary()
    kept = contracts.Tally(c for d in documents for c in d[1].get("contracts", []))

    def counted(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for record in records:
            counts.add(record)
            kept.add(record)
            yield record

    records = store_sorted(counted(chosen(ordered)), "merged")
    ordered.discard()
    for _, document in documents:
        case_errors += [e for e in document.get("case_errors", []) if e not in case_errors]
        for entry in document.get("expectations", []):
            total = known.setdefault(entry["id"], {**entry, **dict.fromkeys(COUNTS, 0)})
            for count in COUNTS:
                total[count] += entry.get(count, 0)
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "merged",
        "tool": TOOL,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "runs": runs,
        "summary": counts.as_dict(),
        "case_errors": case_errors,
        "expectations": [{**e, "status": status_from_counts(e)} for e in known.values()],
        "contracts": kept.result(),
        "conflicts": [
            {
                "case": k[0],
                "target": k[1],
                "dtype": k[2],
                "framework_version": k[3],
                "outcomes": [{"run": run, "outcome": outcome} for run, outcome in v.items()],
            }
            for k, v in sorted(disagreements, key=lambda kv: tuple(str(p) for p in kv[0]))
        ],
        "results": records,
    }
