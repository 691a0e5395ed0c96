"""What changed between two results files: regressions, improvements, coverage and drift inside the bound.

Results are matched by (case, target, dtype), never by framework version or machine, so a run on
torch 2.13 diffs cleanly against one on torch 2.14, or a CPU box against a GPU box. What is compared
is the observed outcome, before known divergences relabel it: an entry in expectations.toml must not
hide that a newer release broke a case.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from conformance.compare import CONFORMANT, NOT_RUN, Outcome
from conformance.record_files import RecordFile, sort_records
from conformance.records import edition, observed, output_identity
from conformance.results import result_key

CATEGORIES = {
    "regressed": "was conformant, now fails",
    "improved": "failed, now conformant",
    "changed": "failed, now fails differently",
    "coverage-lost": "was evaluated, now skipped or unsupported",
    "coverage-gained": "was skipped or unsupported, now evaluated",
    "appeared": "only in the new file",
    "disappeared": "only in the base file",
    "drift": "still passes, but error/bound grew by more than the drift factor",
    "bits-changed": "still passes with a different output bit pattern (informational)",
}
DEFAULT_FAIL_ON = ("regressed",)


@dataclass
class Change:
    category: str
    key: tuple[str, str, str]
    base: dict[str, Any] | None
    new: dict[str, Any] | None

    def describe(self) -> str:
        case, target, dtype = self.key
        before = _state(self.base)
        after = _state(self.new)
        return f"{case} [{target}, {dtype}]: {before} -> {after}"


# Changes kept per category for the terminal and the HTML page; beyond it they are counted only (a
# diff between framework releases may change the bits of every check of a million).
KEEP_CHANGES = 10_000


@dataclass
class DiffResult:
    changes: dict[str, list[Change]] = field(default_factory=lambda: {c: [] for c in CATEGORIES})
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    compared: int = 0
    keep: int = field(default_factory=lambda: KEEP_CHANGES)  # (read when made: tests lower it)

    def count(self, category: str) -> int:
        return self.counts[category]

    def add(self, change: Change) -> None:
        self.counts[change.category] += 1
        if len(self.changes[change.category]) < self.keep:
            self.changes[change.category].append(change)

    def failed(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> bool:
        return any(self.counts[c] for c in fail_on)


def _state(record: dict[str, Any] | None) -> str:
    if record is None:
        return "(absent)"
    text = observed(record)
    if record.get("error_ratio") is not None and text in ("pass", "contract", "mismatch"):
        text += f" (error/bound {record['error_ratio']:.3g})"
    version = edition(record)
    return f"{text} @{version}" if version else text


# What a kept change remembers of a record: what `_state` and the page show.
_KEPT_FIELDS = ("outcome", "observed_outcome", "error_ratio", "framework_version", "profile", "message")


def _kept(record: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else {k: record[k] for k in _KEPT_FIELDS if k in record}


class AmbiguousResults(ValueError):
    """A merged file with several framework versions of one check cannot be diffed cell by cell."""


class _OutOfOrder(Exception):
    pass


def _checks(records: Iterable[dict[str, Any]], label: str) -> Iterator[tuple[tuple[str, str, str], dict[str, Any]]]:
    """(key, record) per check, in key order, from records in key order; a key twice with
    different framework versions is ambiguous, twice with the same version, the last one counts."""
    previous: tuple[str, str, str] | None = None
    for key, group in groupby(records, key=result_key):
        if previous is not None and key < previous:
            raise _OutOfOrder
        previous = key
        first, *others = group
        chosen = first
        for record in others:
            if edition(record) != edition(chosen):
                raise AmbiguousResults(
                    f"{label}: {key} appears for {edition(chosen)} and {edition(record)}; diff single-version, "
                    "single-profile runs (or merge shards of one environment)"
                )
            chosen = record
        yield key, chosen


def diff(base: dict[str, Any], new: dict[str, Any], drift_factor: float = 2.0, drift_floor: float = 0.05) -> DiffResult:
    """Classify every (case, target, dtype) that differs. Drift needs the new ratio >= drift_floor, so
    a ratio going from 1e-9 to 1e-8 (noise in an exact-looking result) is not reported.

    Both files are read in step, one record of each at a time (results files are in key order);
    records in another order (a hand-made file) are sorted on disk first."""
    made: list[RecordFile] = []  # sorted copies, removed when the diff is made

    def in_order(records: Iterable[dict[str, Any]], *, sort: bool = False) -> Iterable[dict[str, Any]]:
        if isinstance(records, RecordFile) and not sort:
            return records
        made.append(sort_records(records))
        return made[-1]

    try:
        sides = [in_order(base["results"]), in_order(new["results"])]
        try:
            return _diff(sides[0], sides[1], drift_factor, drift_floor)
        except _OutOfOrder:
            return _diff(in_order(sides[0], sort=True), in_order(sides[1], sort=True), drift_factor, drift_floor)
    finally:
        for copy in made:
            copy.discard()


def _diff(
    base: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]], drift_factor: float, drift_floor: float
) -> DiffResult:
    result = DiffResult()
    before, after = _checks(base, "base"), _checks(new, "new")
    old_item, new_item = next(before, None), next(after, None)
    while old_item is not None or new_item is not None:
        if new_item is None or (old_item is not None and old_item[0] < new_item[0]):
            assert old_item is not None
            result.add(Change("disappeared", old_item[0], _kept(old_item[1]), None))
            old_item = next(before, None)
        elif old_item is None or new_item[0] < old_item[0]:
            result.add(Change("appeared", new_item[0], None, _kept(new_item[1])))
            new_item = next(after, None)
        else:
            result.compared += 1
            category = _category(old_item[1], new_item[1], drift_factor, drift_floor)
            if category:
                result.add(Change(category, old_item[0], _kept(old_item[1]), _kept(new_item[1])))
            old_item, new_item = next(before, None), next(after, None)
    return result


def comparable_ratios(old: dict[str, Any], new: dict[str, Any]) -> tuple[float | None, float | None]:
    """Ratios against the same bound: error_ratio where both records were judged by the same contract
    or neither by one; the dtype's where only one was (e.g. a file from before contracts)."""
    old_contract = ((old.get("bounds") or {}).get("contract") or {}).get("id")
    new_contract = ((new.get("bounds") or {}).get("contract") or {}).get("id")
    if old_contract == new_contract:
        return old.get("error_ratio"), new.get("error_ratio")

    def dtype_ratio(record: dict[str, Any]) -> float | None:
        dtype_bound = (record.get("bounds") or {}).get("dtype")
        return dtype_bound.get("ratio") if dtype_bound else record.get("error_ratio")

    return dtype_ratio(old), dtype_ratio(new)


def _category(old: dict[str, Any], new: dict[str, Any], drift_factor: float, drift_floor: float) -> str | None:
    was, now = Outcome(observed(old)), Outcome(observed(new))
    if was in NOT_RUN and now in NOT_RUN:
        return None
    if was in NOT_RUN:
        return "coverage-gained"
    if now in NOT_RUN:
        return "coverage-lost"
    if was in CONFORMANT and now not in CONFORMANT:
        return "regressed"
    if was not in CONFORMANT and now in CONFORMANT:
        return "improved"
    if was not in CONFORMANT:
        return "changed" if was != now else None
    old_ratio, new_ratio = comparable_ratios(old, new)
    if (
        old_ratio is not None
        and new_ratio is not None
        and new_ratio >= drift_floor
        and new_ratio > drift_factor * old_ratio
    ):
        return "drift"
    old_bits, new_bits = output_identity(old), output_identity(new)
    if old_bits and new_bits and old_bits != new_bits:
        return "bits-changed"
    return None


def text_report(result: DiffResult, limit: int = 50) -> str:
    counts = ", ".join(f"{result.count(c)} {c}" for c in CATEGORIES if result.count(c))
    lines = [f"compared {result.compared} check(s): {counts or 'no differences'}"]
    for category, meaning in CATEGORIES.items():
        changes = result.changes[category]
        if not changes:
            continue
        lines.append(f"\n{category.upper()} ({result.count(category)}): {meaning}")
        shown = changes[:limit]
        lines += [f"  {change.describe()}" for change in shown]
        if result.count(category) > len(shown):
            where = "see --html" if len(changes) > len(shown) else f"the first {len(changes)} are kept"
            lines.append(f"  ... and {result.count(category) - len(shown)} more ({where})")
    return "\n".join(lines)


def html_report(result: DiffResult, base_label: str, new_label: str) -> str:
    """A plain, static page (no script): every value is escaped."""
    escape = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Conformance diff</title>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        "<style>body{font:13px system-ui,sans-serif;margin:16px}table{border-collapse:collapse}"
        "td,th{border:1px solid #d1d9e0;padding:2px 6px;text-align:left}h2{font-size:15px}"
        ".regressed{color:#cf222e}.improved{color:#1a7f37}</style></head><body>",
        f"<h1>Conformance diff</h1><p>base: {escape(base_label)}<br>new: {escape(new_label)}</p>",
        f"<p>{result.compared} check(s) compared.</p>",
    ]
    for category, meaning in CATEGORIES.items():
        changes = result.changes[category]
        parts.append(
            f"<h2 class='{category}'>{escape(category)} ({result.count(category)})</h2><p>{escape(meaning)}</p>"
        )
        if not changes:
            continue
        parts.append(
            "<table><tr><th>case</th><th>target</th><th>dtype</th><th>base</th><th>new</th><th>message</th></tr>"
        )
        for change in changes:
            message = (change.new or change.base or {}).get("message", "")
            cells = (*change.key, _state(change.base), _state(change.new), message)
            parts.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        if result.count(category) > len(changes):
            parts.append(f"<p>... and {result.count(category) - len(changes)} more, not listed.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)
