"""A run at a glance, from its records: which framework fails which case, and why.

The terminal summary and the report's first screen both read this. It is an accumulator (`add` one
record at a time) whose size grows with the number of targets and of causes of failure (checks that
fail alike are one `FailureGroup`), not with the run.

Targets are grouped by framework and by kind of check (`KINDS`): the plain forward call, gradients,
execution modes, equivalence oracles (judged against their framework's own primary call) and GPU
targets. A target that ran nothing on this machine (every check skipped, or unexpressible) is not a
row of its own: such targets are listed once per reason.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conformance.compare import Outcome
from conformance.semantics import CONV, operation_named

KINDS = ("forward", "gradients", "execution modes", "oracles", "GPU")
# What a check's outcome means at a glance; "failing" is everything that fails the run.
BUCKETS = ("conformant", "xfail", "failing", "unsupported", "skip")
_BUCKET = {
    Outcome.PASS: "conformant",
    Outcome.EXPECTED_ERROR: "conformant",
    Outcome.XFAIL: "xfail",
    Outcome.UNSUPPORTED: "unsupported",
    Outcome.SKIP: "skip",
}


def kind_of(record: Mapping[str, Any]) -> str:
    if record.get("device") == "gpu":
        return "GPU"
    if record.get("quantity", "output") != "output":
        return "gradients"
    if record.get("baseline"):
        return "oracles"
    return "execution modes" if record.get("variant") else "forward"


def bucket_of(record: Mapping[str, Any]) -> str:
    outcome = record["outcome"]
    if outcome == Outcome.XPASS and not (record.get("expectation") or {}).get("strict", True):
        return "conformant"  # a non-strict entry's xpass does not fail the run
    return _BUCKET.get(outcome, "failing")


def failure_detail(record: Mapping[str, Any]) -> str:
    """The worst element of a mismatch (or a broken contract), or the first line of what went wrong."""
    worst, ratio = record.get("worst"), record.get("error_ratio")
    if record["outcome"] in (Outcome.MISMATCH, Outcome.CONTRACT) and worst:
        ratio_text = f"error/bound {ratio:.3g}, " if isinstance(ratio, float) and math.isfinite(ratio) else ""
        return (
            f"{ratio_text}worst at {worst['index']}: got {_number(worst['got'])}, expected {_number(worst['expected'])}"
        )
    return (record.get("message") or "").split("\n", 1)[0][:200]


def _number(value: Any) -> str:
    """A value of the worst element: a float, or the text a record keeps for NaN and the infinities."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# What varies between checks of one cause and is left out of its words: framework graph names
# ({{function_node ...}}), op tags ([Op:...]), numbers and shapes.
_NOISE = (
    (re.compile(r"\{\{[^}]*\}\}\s*"), ""),
    (re.compile(r"\s*\[Op:[^\]]*\]"), ""),
    (re.compile(r"\s*\(a value was due\)"), ""),
    (re.compile(r"^raised "), ""),
    (re.compile(r"Exception encountered when calling [\w.]+\(\)\.\s*"), ""),
    (re.compile(r"Graph execution error:\s*"), ""),
    (re.compile(r"[.\s]*name:\s*$"), ""),
    (re.compile(r"\[[-\d, ]*\]"), "[...]"),
    (re.compile(r"\d+(\.\d+)?(e[-+]?\d+)?"), "N"),
)
_CAUSES = {
    Outcome.MISMATCH: "values beyond the error bound",
    Outcome.CONTRACT: "values beyond the accumulation contract",
    Outcome.MISSING_ERROR: "a non-empty answer where no valid output exists",
    Outcome.NONDETERMINISTIC: "different bits from the same call",
}


def cause_of(record: Mapping[str, Any]) -> str:
    """What went wrong, in words that checks of one cause share: the outcome's meaning, or the
    framework's message without the numbers, shapes and names that vary from check to check."""
    outcome = record["outcome"]
    if outcome == Outcome.XPASS:
        return f"known divergence {(record.get('expectation') or {}).get('id', '?')} no longer reproduces here"
    message = (record.get("message") or "").split("\n", 1)[0]
    if outcome in _CAUSES:
        nan = " (NaN/Inf placement)" if "differ in NaN/Inf" in message else ""
        return _CAUSES[Outcome(outcome)] + nan
    for pattern, replacement in _NOISE:
        message = pattern.sub(replacement, message)
    return message.strip().rstrip(".")[:120] or outcome


@dataclass
class FailureGroup:
    """Failing checks of one cause: one framework and kind of check, one outcome, the same words,
    and the same known divergence that nearly took them in."""

    framework: str
    kind: str
    outcome: str
    cause: str
    near_miss: str  # "entry-id: its first unmet condition", or ""
    count: int = 0
    example: str = ""  # the first check: "case target dtype"
    example_detail: str = ""  # its worst element, or the first line of what went wrong
    targets: set[str] = field(default_factory=set)
    dtypes: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "framework": self.framework,
            "kind": self.kind,
            "outcome": self.outcome,
            "cause": self.cause,
            "near_miss": self.near_miss,
            "count": self.count,
            "example": self.example,
            "example_detail": self.example_detail,
            "targets": sorted(self.targets),
            "dtypes": sorted(self.dtypes),
        }


def _near_miss_text(record: Mapping[str, Any]) -> str:
    near = record.get("near_miss")
    return f"{near['id']}: {near['unmet'][0]}" if near and near.get("unmet") else ""


@dataclass
class Tally:
    targets: set[str] = field(default_factory=set)
    counts: Counter[str] = field(default_factory=Counter)
    worst_ratio: float | None = None  # the largest finite error/bound of a conformant or failing check
    worst_check: str = ""

    def add(self, record: Mapping[str, Any], bucket: str) -> None:
        self.targets.add(record["target"])
        self.counts[bucket] += 1
        ratio = record.get("error_ratio")
        if (
            bucket in ("conformant", "failing")
            and isinstance(ratio, (int, float))
            and math.isfinite(ratio)
            and (self.worst_ratio is None or ratio > self.worst_ratio)
        ):
            self.worst_ratio = float(ratio)
            self.worst_check = f"{record['case']} {record['target']} {record['dtype']}"

    @property
    def ran_nothing(self) -> bool:
        """Every check skipped or unsupported."""
        return self.counts["skip"] + self.counts["unsupported"] == sum(self.counts.values())

    def merge(self, other: Tally) -> None:
        self.targets |= other.targets
        self.counts.update(other.counts)
        if other.worst_ratio is not None and (self.worst_ratio is None or other.worst_ratio > self.worst_ratio):
            self.worst_ratio, self.worst_check = other.worst_ratio, other.worst_check

    def as_dict(self) -> dict[str, Any]:
        return {
            "targets": len(self.targets),
            "checks": sum(self.counts.values()),
            **{bucket: self.counts[bucket] for bucket in BUCKETS},
            "worst_ratio": self.worst_ratio,
            "worst_check": self.worst_check,
        }


def rank_of(record: Mapping[str, Any]) -> str:
    """The record's number of spatial axes as a label ("1-D", "2-D", "3-D"): rank is a dimension of
    the summary of its own, since one target (JAX's, ONNX Runtime's) serves every rank."""
    shape = record.get("input_shape")
    return f"{len(shape) - 2}-D" if isinstance(shape, list) and len(shape) >= 3 else "2-D"


@dataclass
class _Target:
    framework: str
    operation: str
    kind: str
    tally: Tally = field(default_factory=Tally)
    by_rank: dict[str, Tally] = field(default_factory=dict)
    not_run_reasons: Counter[str] = field(default_factory=Counter)
    warnings: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (category, where) -> first, count

    @property
    def ran_nothing(self) -> bool:
        return self.tally.ran_nothing

    def merge(self, later: _Target) -> None:
        self.tally.merge(later.tally)
        for rank, tally in later.by_rank.items():
            if rank in self.by_rank:
                self.by_rank[rank].merge(tally)
            else:
                self.by_rank[rank] = tally
        self.not_run_reasons.update(later.not_run_reasons)
        for key, warning in later.warnings.items():
            if key in self.warnings:
                self.warnings[key]["checks"] += warning["checks"]
            else:
                self.warnings[key] = warning


class Overview:
    def __init__(self) -> None:
        self.targets: dict[str, _Target] = {}
        self.failure_count = 0
        self.causes: dict[tuple[str, str, str, str, str], FailureGroup] = {}
        self.known: dict[str, dict[str, dict[str, Any]]] = {}  # framework -> expectation id -> {link, checks}

    def add(self, record: Mapping[str, Any]) -> None:
        target = self.targets.get(record["target"])
        if target is None:
            operation = operation_named(record.get("operation", CONV))
            target = self.targets[record["target"]] = _Target(record["framework"], operation, kind_of(record))
        bucket = bucket_of(record)
        target.tally.add(record, bucket)
        rank = rank_of(record)
        by_rank = target.by_rank.get(rank)
        if by_rank is None:  # (not setdefault: it would make a Tally per record, a third of this)
            by_rank = target.by_rank[rank] = Tally()
        by_rank.add(record, bucket)
        if bucket in ("skip", "unsupported"):
            target.not_run_reasons[(record.get("message") or bucket).split("\n", 1)[0]] += 1
        for warning in record.get("warnings") or ():
            key = (warning["category"], warning["where"])
            seen = target.warnings.setdefault(key, {**warning, "checks": 0})
            seen["checks"] += 1
        if bucket == "xfail" and record.get("expectation"):
            expectation = record["expectation"]
            known = self.known.setdefault(record["framework"], {})
            known.setdefault(
                expectation["id"], {"id": expectation["id"], "link": expectation.get("link", ""), "checks": 0}
            )
            known[expectation["id"]]["checks"] += 1
        if bucket == "failing":
            near = _near_miss_text(record)
            cause = cause_of(record)
            framework, kind, outcome = str(record["framework"]), kind_of(record), str(record["outcome"])
            cause_key = (framework, kind, outcome, cause, near)
            group = self.causes.get(cause_key)
            if group is None:
                example = f"{record['case']} {record['target']} {record['dtype']}"
                group = self.causes[cause_key] = FailureGroup(
                    framework, kind, outcome, cause, near, example=example, example_detail=failure_detail(record)
                )
            group.count += 1
            group.targets.add(record["target"])
            group.dtypes.add(record["dtype"])
            self.failure_count += 1

    def merge(self, later: Overview) -> None:
        """What `later` made of the records after this one's (a part of a pass, conformance/record_passes.py):
        as if this one had been handed them, firsts included (each example is the first check of its kind)."""
        for name, target in later.targets.items():
            if name in self.targets:
                self.targets[name].merge(target)
            else:
                self.targets[name] = target
        self.failure_count += later.failure_count
        for key, group in later.causes.items():
            mine = self.causes.get(key)
            if mine is None:
                self.causes[key] = group
                continue
            mine.count += group.count
            mine.targets |= group.targets
            mine.dtypes |= group.dtypes
        for framework, entries in later.known.items():
            known = self.known.setdefault(framework, {})
            for entry_id, entry in entries.items():
                if entry_id in known:
                    known[entry_id]["checks"] += entry["checks"]
                else:
                    known[entry_id] = entry

    def add_all(self, records: Iterable[Mapping[str, Any]]) -> Overview:
        for record in records:
            self.add(record)
        return self

    def groups(self, by: str) -> dict[tuple[str, str], Tally]:
        """Tallies per (framework, `by`), `by` being "kind" or "operation" (with the rank: "conv 1-D", since
        one target of JAX's or ONNX Runtime's serves every rank), over targets and ranks that ran
        something; failing groups first."""
        grouped: dict[tuple[str, str], Tally] = {}
        for target in self.targets.values():
            if target.ran_nothing:
                continue
            if by == "operation":
                for rank, tally in target.by_rank.items():
                    if not tally.ran_nothing:
                        grouped.setdefault((target.framework, f"{target.operation} {rank}"), Tally()).merge(tally)
            else:
                grouped.setdefault((target.framework, getattr(target, by)), Tally()).merge(target.tally)
        return dict(sorted(grouped.items(), key=lambda item: (-item[1].counts["failing"], item[0])))

    def failure_groups(self) -> list[FailureGroup]:
        """The failing checks by cause, the largest first."""
        return sorted(self.causes.values(), key=lambda g: (-g.count, g.framework, g.kind, g.cause))

    def idle(self) -> list[dict[str, Any]]:
        """Targets that ran nothing here, grouped by their commonest reason."""
        by_reason: dict[str, dict[str, Any]] = {}
        for name, target in sorted(self.targets.items()):
            if target.ran_nothing:
                reason = target.not_run_reasons.most_common(1)[0][0] if target.not_run_reasons else "not run"
                entry = by_reason.setdefault(reason, {"reason": reason, "targets": [], "checks": 0})
                entry["targets"].append(name)
                entry["checks"] += sum(target.tally.counts.values())
        return sorted(by_reason.values(), key=lambda e: -len(e["targets"]))

    def warnings(self) -> list[dict[str, Any]]:
        """Each framework warning (its category and place) once, with the targets that raised it, how
        many checks saw it, and its first message."""
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for name, target in sorted(self.targets.items()):
            for (category, where), warning in target.warnings.items():
                entry = merged.setdefault((category, where), {**warning, "targets": [], "checks": 0})
                entry["targets"].append(name)
                entry["checks"] += warning["checks"]
        return list(merged.values())

    def as_dict(self) -> dict[str, Any]:
        """What the report embeds: framework x kind (failing frameworks first), the idle targets,
        the failing checks by cause, the warnings."""
        cells = {f"{framework}|{kind}": tally.as_dict() for (framework, kind), tally in self.groups("kind").items()}
        frameworks = sorted({key.split("|")[0] for key in cells})
        failing = {f: sum(cells.get(f"{f}|{k}", {}).get("failing", 0) for k in KINDS) for f in frameworks}
        return {
            "kinds": list(KINDS),
            "frameworks": sorted(frameworks, key=lambda f: (-failing[f], f)),
            "cells": cells,
            "idle": self.idle(),
            "failure_count": self.failure_count,
            "failure_groups": [group.as_dict() for group in self.failure_groups()],
            "warnings": self.warnings(),
            "known": {framework: list(entries.values()) for framework, entries in self.known.items()},
        }
