"""What changed between two results files: regressions, improvements, coverage and drift inside the bound.

Results are matched by (case, target, dtype), never by framework version or machine, so a run on
torch 2.13 diffs cleanly against one on torch 2.14, or a CPU box against a GPU box. What is compared
is the observed outcome, before known divergences relabel it: an entry in expectations.toml must not
hide that a newer release broke a case.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

from conformance.compare import CONFORMANT, NOT_RUN, Outcome
from conformance.records import observed
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


@dataclass
class DiffResult:
    changes: dict[str, list[Change]] = field(default_factory=lambda: {c: [] for c in CATEGORIES})
    compared: int = 0

    def count(self, category: str) -> int:
        return len(self.changes[category])

    def failed(self, fail_on: tuple[str, ...] = DEFAULT_FAIL_ON) -> bool:
        return any(self.changes[c] for c in fail_on)


def _state(record: dict[str, Any] | None) -> str:
    if record is None:
        return "(absent)"
    text = observed(record)
    if record.get("error_ratio") is not None and text in ("pass", "contract", "mismatch"):
        text += f" (error/bound {record['error_ratio']:.3g})"
    version = record.get("framework_version")
    return f"{text} @{version}" if version else text


class AmbiguousResults(ValueError):
    """A merged file with several framework versions of one check cannot be diffed cell by cell."""


def index(document: dict[str, Any], label: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    indexed: dict[tuple[str, str, str], dict[str, Any]] = {}
    for record in document["results"]:
        key = result_key(record)
        if key in indexed and indexed[key].get("framework_version") != record.get("framework_version"):
            raise AmbiguousResults(
                f"{label}: {key} appears for {indexed[key].get('framework_version')} and "
                f"{record.get('framework_version')}; diff single-version runs (or merge shards of one environment)"
            )
        indexed[key] = record
    return indexed


def diff(base: dict[str, Any], new: dict[str, Any], drift_factor: float = 2.0, drift_floor: float = 0.05) -> DiffResult:
    """Classify every (case, target, dtype) that differs. Drift needs the new ratio >= drift_floor, so
    a ratio going from 1e-9 to 1e-8 (noise in an exact-looking result) is not reported."""
    before, after = index(base, "base"), index(new, "new")
    result = DiffResult()
    for key in sorted(before.keys() | after.keys()):
        old_record, new_record = before.get(key), after.get(key)
        if old_record is None:
            result.changes["appeared"].append(Change("appeared", key, None, new_record))
            continue
        if new_record is None:
            result.changes["disappeared"].append(Change("disappeared", key, old_record, None))
            continue
        result.compared += 1
        category = _category(old_record, new_record, drift_factor, drift_floor)
        if category:
            result.changes[category].append(Change(category, key, old_record, new_record))
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
    if old.get("output_sha256") and new.get("output_sha256") and old["output_sha256"] != new["output_sha256"]:
        return "bits-changed"
    return None


def text_report(result: DiffResult, limit: int = 50) -> str:
    counts = ", ".join(f"{result.count(c)} {c}" for c in CATEGORIES if result.count(c))
    lines = [f"compared {result.compared} check(s): {counts or 'no differences'}"]
    for category, meaning in CATEGORIES.items():
        changes = result.changes[category]
        if not changes:
            continue
        lines.append(f"\n{category.upper()} ({len(changes)}): {meaning}")
        lines += [f"  {change.describe()}" for change in changes[:limit]]
        if len(changes) > limit:
            lines.append(f"  ... and {len(changes) - limit} more (see --html)")
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
        parts.append(f"<h2 class='{category}'>{escape(category)} ({len(changes)})</h2><p>{escape(meaning)}</p>")
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
    parts.append("</body></html>\n")
    return "".join(parts)
