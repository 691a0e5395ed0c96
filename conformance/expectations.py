"""Known divergences (`cases/expectations.toml`): which failures are known, and which entries went stale.

An entry names case-id globs, target-id globs and optional dtypes, framework version ranges (PEP 440),
device, precision mode, machine and environment variables. A failing result it matches becomes
`xfail`; a conformant one becomes `xpass` (the divergence no longer reproduces). After a run, each
entry gets a status: reproduced, fixed, partly fixed, not evaluated (matched only skipped results,
e.g. GPU entries on a CPU machine), changed (fails, but
not as documented), not applicable here (its checks ran but its version/env/device conditions did
not hold), not in this run (its checks were deselected) or stale (it matches no check of the corpus).
"""

from __future__ import annotations

import fnmatch
import os
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet

from conformance import frameworks, machine, sweeps
from conformance.cases import CaseError, strict_validator
from conformance.cases.entries import read_entries
from conformance.compare import CONFORMANT, NOT_RUN, Outcome
from conformance.records import Record

SCHEMA_PATH = Path(__file__).with_name("schema") / "expectations.schema.json"
FILE_NAME = "expectations.toml"


# eq=False: an entry is itself (hashed by identity), and a large run looks entries up per record.
@dataclass(frozen=True, eq=False)
class Expectation:
    id: str
    file: str
    line: int | None
    cases: tuple[str, ...]
    targets: tuple[str, ...]
    reason: str
    link: str
    dtypes: tuple[str, ...] = ()
    versions: tuple[tuple[str, SpecifierSet], ...] = ()
    expect: str | None = None
    device: str | None = None
    precision: str | None = None
    machine: str | None = None
    env: tuple[tuple[str, str | bool], ...] = ()
    # Facts of the record's process (its `runtime`): a value, or a tuple of values any of which will do.
    runtime: tuple[tuple[str, Any], ...] = ()
    outcomes: tuple[str, ...] = ()
    strict: bool = True
    where: tuple[sweeps.Constraint, ...] = ()  # geometry conditions, in the names sweeps' `where` uses

    def matches_check(self, case: str, target: str, dtype: str) -> bool:
        """The static part: case, target and dtype (what `validate` can check without running)."""
        return self.takes_case(case) and _matches_target(self, target) and self.takes_dtype(dtype)

    def takes_case(self, case: str) -> bool:
        return any(fnmatch.fnmatchcase(case, g) for g in self.cases)

    def takes_dtype(self, dtype: str) -> bool:
        return not self.dtypes or dtype in self.dtypes

    def matches(self, record: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
        return self.matches_check(record["case"], record["target"], record["dtype"]) and self.holds_for(record, environ)

    def holds_for(self, record: Mapping[str, Any], environ: Mapping[str, str]) -> bool:
        """Whether the record meets every condition beyond the case, target and dtype globs."""
        if self.outcomes == (Outcome.CONTRACT,) and not (record.get("bounds") or {}).get("contract"):
            return False  # a broken accumulation contract: only checks a contract judged can show it, or its fix
        return next(self._misses(record, environ), None) is None

    def unmet(self, record: Mapping[str, Any], environ: Mapping[str, str]) -> list[str]:
        """The conditions beyond the case, target and dtype globs that this record does not meet, in
        words: empty when the entry takes it."""
        return list(self._misses(record, environ))

    def _misses(self, record: Mapping[str, Any], environ: Mapping[str, str]) -> Iterator[str]:
        """Each condition the record misses, as it is found (`matches` stops at the first)."""
        if self.expect and record.get("expect") != self.expect:
            yield f"`expect` is {self.expect}, the case expects {record.get('expect')}"
        if self.where:
            yield from _where_misses(self, sweeps.record_variables(record))
        for name in ("device", "precision"):
            wanted = getattr(self, name)
            if wanted and record.get(name) != wanted:
                yield f"`{name}` is {wanted}, the check's is {record.get(name)}"
        if self.machine and platform.machine() != self.machine:
            yield f"`machine` is {self.machine}, this is {platform.machine()}"
        for name, wanted in self.env:
            value = environ.get(name)
            if (value is not None) if wanted is False else (value != wanted):
                yield f"`env` {name}={_toml(wanted)}, here {'(unset)' if value is None else value}"
        facts = record.get("runtime") or {}
        for name, wanted in self.runtime:
            if name not in facts or not machine.fact_matches(facts[name], wanted):
                here = _toml(facts[name]) if name in facts else "not reported"
                yield f"`runtime` {name}={_toml(wanted)}, here {here}"
        for name, specifier in self.versions:
            version = _version(name, record)
            if version is None or not specifier.contains(version, prereleases=True):
                yield f"`versions` {name} {specifier}, here {version or 'none'}"

    def conditions_met(self, record: Mapping[str, Any]) -> list[str]:
        """The entry's conditions, each as this record met it: what to narrow when it matched a
        check that is conformant."""
        met = []
        if self.where:
            names = sweeps.record_variables(record) or {}
            used = dict.fromkeys(n for c in self.where for n in c.names)
            met.append(f"`where` holds here ({', '.join(f'{n}={_toml(names.get(n))}' for n in used)})")
        if self.dtypes:
            met.append(f"`dtypes` include {record['dtype']}")
        for name, specifier in self.versions:
            version = _version(name, record)
            met.append(f"`versions` {name} {specifier} contains {version}")
        for name in ("expect", "device", "precision", "machine"):
            if getattr(self, name):
                met.append(f"`{name}` is {getattr(self, name)}")
        met += [f"`env` {name}={'(unset)' if value is False else value}" for name, value in self.env]
        facts = record.get("runtime") or {}
        met += [f"`runtime` {name}={_toml(facts.get(name, value))}" for name, value in self.runtime]
        if self.cases != ("*",):
            met.append(f"`cases` match {record['case']}")
        return met

    def summary(self) -> dict[str, str]:
        return {"id": self.id, "reason": self.reason, "link": self.link}


@dataclass
class LoadedExpectations:
    entries: list[Expectation]
    errors: list[CaseError]


@cache
def _validator() -> Any:
    return strict_validator(SCHEMA_PATH)


def load(path: Path, label: str | None = None) -> LoadedExpectations:
    """Every valid entry, and an error naming file, entry and field for each invalid one."""
    label = label or str(path)
    read = read_entries(path, label, "divergence", _validator(), "known divergences")
    entries: list[Expectation] = []
    errors = read.errors
    for index, raw in read.valid:
        line = read.lines.get(raw["id"])
        try:
            versions = tuple((name, SpecifierSet(spec)) for name, spec in sorted(raw.get("versions", {}).items()))
        except InvalidSpecifier as exc:
            line = read.line_of(index, ["versions"])
            errors.append(CaseError(label, f"not a PEP 440 version range: {exc}", raw["id"], "versions", line))
            continue
        try:
            where = tuple(sweeps.Constraint.parse(text) for text in raw.get("where", []))
        except ValueError as exc:
            errors.append(CaseError(label, str(exc), raw["id"], "where", read.line_of(index, ["where"])))
            continue
        entries.append(
            Expectation(
                id=raw["id"],
                file=label,
                line=line,
                cases=tuple(raw["cases"]),
                targets=tuple(raw["targets"]),
                reason=raw["reason"],
                link=raw["link"],
                dtypes=tuple(raw.get("dtypes", ())),
                versions=versions,
                expect=raw.get("expect"),
                device=raw.get("device"),
                precision=raw.get("precision"),
                machine=raw.get("machine"),
                env=tuple(sorted(raw.get("env", {}).items())),
                runtime=tuple(sorted(raw.get("runtime", {}).items())),  # (lists stay lists: "any of")
                outcomes=tuple(raw.get("outcomes", ())),
                strict=raw.get("strict", True),
                where=where,
            )
        )
    return LoadedExpectations(entries, errors)


# (entry, geometry's names) -> the entry's `where` conditions that do not hold there. The names of a
# geometry are one object per process (sweeps.record_variables), and a large run's records share a
# few dozen geometries: evaluating the expressions was most of what settling a record cost.
_where_missed: dict[tuple[int, int], tuple[Expectation, Mapping[str, Any], tuple[str, ...]]] = {}
_WHERE_MISSED_KEPT = 4096


def _where_misses(entry: Expectation, names: Mapping[str, Any] | None) -> tuple[str, ...]:
    if names is None:
        return tuple(f"`where` {c.text!r} does not hold" for c in entry.where)
    key = (id(entry), id(names))
    found = _where_missed.get(key)
    if found is None or found[0] is not entry or found[1] is not names:  # (both kept alive: ids not reused)
        if len(_where_missed) >= _WHERE_MISSED_KEPT:
            _where_missed.clear()
        misses = tuple(f"`where` {c.text!r} does not hold" for c in entry.where if not c.holds(names))
        found = _where_missed[key] = (entry, names, misses)
    return found[2]


def _version(name: str, record: Mapping[str, Any]) -> str | None:
    """The version a range is checked against: the one that produced the result for the record's
    own framework, the one installed in this process for any other package."""
    own = name == record.get("framework")
    version: str | None = record.get("framework_version") if own else frameworks.version_of(name)
    return version


def _toml(value: Any) -> str:
    """A value as the entry's TOML spells it (true, not True; "AVX2")."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


def unmatched_globs(entries: Iterable[Expectation], case_ids: list[str], target_ids: list[str]) -> list[CaseError]:
    """Globs that match no case or no target of the corpus: a typo, or an entry for a removed case."""
    errors = []
    for entry in entries:
        for field, globs, known in (("cases", entry.cases, case_ids), ("targets", entry.targets, target_ids)):
            for glob in globs:
                if not any(fnmatch.fnmatchcase(k, glob) for k in known):
                    errors.append(
                        CaseError(entry.file, f"{glob!r} matches no known {field[:-1]}", entry.id, field, entry.line)
                    )
    return errors


# (entries list, target) -> the entries whose target globs take the target, in file order: a worker
# applies the same entries to every record it makes, and most entries name a few targets.
_taking: dict[tuple[int, int, str], tuple[Sequence[Expectation], list[Expectation]]] = {}
# (entries list, case) -> the entries whose case globs take the case: a batch's checks (a case x
# dtype through every target) share it, and globs are most of what matching a record costs.
_taking_case: dict[tuple[int, int, str], tuple[Sequence[Expectation], frozenset[Expectation]]] = {}
_TAKING_CASE_KEPT = 64  # cases; a batch asks for one


def _entries_taking(entries: Iterable[Expectation], target: str) -> Iterable[Expectation]:
    if not isinstance(entries, list | tuple):
        return entries
    key = (id(entries), len(entries), target)
    found = _taking.get(key)
    if found is None or found[0] is not entries:  # (the list itself is kept: its id is not reused)
        found = _taking[key] = (entries, [e for e in entries if _matches_target(e, target)])
    return found[1]


def _entries_naming(entries: Iterable[Expectation], case: str, target: str, dtype: str) -> list[Expectation]:
    """The entries whose case, target and dtype globs take this check (`matches_check`), in file order."""
    taking = _entries_taking(entries, target)
    if not isinstance(entries, list | tuple):
        return [e for e in taking if e.matches_check(case, target, dtype)]
    key = (id(entries), len(entries), case)
    found = _taking_case.get(key)
    if found is None or found[0] is not entries:
        if len(_taking_case) >= _TAKING_CASE_KEPT:
            _taking_case.clear()
        found = _taking_case[key] = (entries, frozenset(e for e in entries if e.takes_case(case)))
    return [e for e in taking if e in found[1] and e.takes_dtype(dtype)]


def apply(record: Record, entries: Iterable[Expectation], environ: Mapping[str, str] | None = None) -> Record:
    """Turn a matched failure into xfail and a matched success into xpass (in place; returns the record)."""
    environ = os.environ if environ is None else environ
    named = _entries_naming(entries, record["case"], record["target"], record["dtype"])
    entry = next((e for e in named if e.holds_for(record, environ)), None)
    observed = Outcome(record["outcome"])
    if entry is None:
        if observed not in CONFORMANT and observed not in NOT_RUN:
            _note_near_miss(record, named, environ)
        return record
    record["expectation"] = {**entry.summary(), "strict": entry.strict}
    if observed in NOT_RUN:
        return record
    if observed in CONFORMANT:
        record["observed_outcome"] = observed.value
        record["outcome"] = Outcome.XPASS.value
        met = entry.conditions_met(record)
        record["message"] = (
            f"known divergence {entry.id!r} ({entry.file}) matched this conformant check ({observed.value}): "
            f"narrow the condition that took it in: {'; '.join(met) or 'its case and target globs'}. "
            f"{record['message']}"
        ).strip()
    elif not entry.outcomes or observed.value in entry.outcomes:
        record["observed_outcome"] = observed.value
        record["outcome"] = Outcome.XFAIL.value
    else:
        record["message"] = (
            f"{record['message']} (known divergence {entry.id!r} expects {'/'.join(entry.outcomes)}, "
            f"this is {observed.value}: not excused)"
        )
    return record


def _note_near_miss(record: Record, named: Iterable[Expectation], environ: Mapping[str, str]) -> None:
    """A failure no entry excuses: of the entries that name its case, target and dtype, the one that
    misses it by the fewest conditions, and those conditions (a machine whose facts the entry did not
    foresee, or a new geometry), so that a red run says which entry to look at."""
    misses = [(entry, entry.unmet(record, environ)) for entry in named]
    misses = [(entry, unmet) for entry, unmet in misses if unmet]
    if misses:
        entry, unmet = min(misses, key=lambda miss: len(miss[1]))  # the nearest; the first of equals
        record["near_miss"] = {"id": entry.id, "unmet": unmet}


COUNTS = ("xfail", "xpass", "not_run", "other", "conditions_unmet", "in_corpus")


@dataclass(frozen=True)
class Corpus:
    """Every check of the corpus, selected or not, without listing them: every target takes every
    case in each of its dtypes, so a check exists for an entry when one of its target globs
    matches a target and one of its case globs a case that has one of its dtypes."""

    case_dtypes: Mapping[str, tuple[str, ...]]  # case id -> its dtypes
    targets: tuple[str, ...]

    def has_checks_of(self, entry: Expectation) -> bool:
        if not any(fnmatch.fnmatchcase(t, g) for g in entry.targets for t in self.targets):
            return False
        wanted = set(entry.dtypes)
        return any(
            (not wanted or not wanted.isdisjoint(dtypes)) and any(fnmatch.fnmatchcase(case, g) for g in entry.cases)
            for case, dtypes in self.case_dtypes.items()
        )


class StatusTally:
    """Per entry: what it did to a run's results, fed one record at a time; `statuses()` gives each
    its counts and status.

    `corpus` tells a stale entry (its globs match no check at all: a renamed or removed case) from
    one whose checks were merely not selected this run.
    """

    def __init__(self, entries: Iterable[Expectation], corpus: Corpus | None = None) -> None:
        self.entries = list(entries)
        self.corpus = corpus
        self.buckets = {entry.id: dict.fromkeys(COUNTS, 0) for entry in self.entries}
        self.dtypes: dict[str, dict[str, set[str]]] = {e.id: {"xfail": set(), "xpass": set()} for e in self.entries}
        # Entries whose target and dtype globs take a (target, dtype): a million records meet each
        # entry's target globs once per target, and their case globs once per case.
        self._candidates: dict[tuple[str, str], list[tuple[Expectation, dict[str, bool]]]] = {}
        self._case_matches: dict[str, dict[str, bool]] = {entry.id: {} for entry in self.entries}  # id -> case -> glob

    def add(self, record: Mapping[str, Any]) -> None:
        matched = record.get("expectation")
        if matched and matched["id"] in self.buckets:
            outcome = record["outcome"]
            bucket = self.buckets[matched["id"]]
            bucket[outcome if outcome in ("xfail", "xpass") else "not_run" if outcome in NOT_RUN else "other"] += 1
            self.dtypes[matched["id"]].get(outcome, set()).add(record["dtype"])
        elif not matched:
            case = record["case"]
            for entry, cases in self._candidates_for(record["target"], record["dtype"]):
                if case not in cases:
                    cases[case] = any(fnmatch.fnmatchcase(case, g) for g in entry.cases)
                if cases[case]:
                    self.buckets[entry.id]["conditions_unmet"] += 1  # its checks ran, but version/env/... did not hold

    def _candidates_for(self, target: str, dtype: str) -> list[tuple[Expectation, dict[str, bool]]]:
        key = (target, dtype)
        if key not in self._candidates:
            self._candidates[key] = [
                (entry, self._case_matches[entry.id])
                for entry in self.entries
                if (not entry.dtypes or dtype in entry.dtypes) and _matches_target(entry, target)
            ]
        return self._candidates[key]

    def merge(self, later: StatusTally) -> None:
        """What `later` counted (the same entries, the records after this one's)."""
        for entry_id, counts in later.buckets.items():
            bucket = self.buckets[entry_id]
            for name, count in counts.items():
                bucket[name] += count
            for outcome, dtypes in later.dtypes[entry_id].items():
                self.dtypes[entry_id][outcome] |= dtypes

    def statuses(self) -> list[dict[str, Any]]:
        result = []
        for entry in self.entries:
            bucket = self.buckets[entry.id]
            in_corpus = self.corpus is None or self.corpus.has_checks_of(entry)
            bucket["in_corpus"] = int(in_corpus or any(bucket[k] for k in COUNTS[:5]))
            bucket["strict"] = int(entry.strict)
            status = status_from_counts(bucket)
            narrow = _what_to_narrow(entry, status, self.dtypes[entry.id])
            result.append({**entry.summary(), "status": status, **bucket, "narrow": narrow})
        return result


def statuses(
    entries: Iterable[Expectation], records: Iterable[Mapping[str, Any]], corpus: Corpus | None = None
) -> list[dict[str, Any]]:
    """`StatusTally` over `records`."""
    tally = StatusTally(entries, corpus)
    for record in records:
        tally.add(record)
    return tally.statuses()


def _what_to_narrow(entry: Expectation, status: str, dtypes: Mapping[str, set[str]]) -> str | None:
    """Which condition of an entry that excuses conformant checks to edit, judged from all of them:
    reproducing nowhere is a fix (its version range); reproducing in some dtypes only, its dtypes;
    otherwise the geometry (`where`) or the case globs."""
    if status == "fixed":
        return "bound `versions` above (it reproduces on none of its checks) or remove the entry"
    if status != "partly fixed":
        return None
    if dtypes["xpass"].isdisjoint(dtypes["xfail"]):
        passing = ", ".join(sorted(dtypes["xpass"]))
        return f"narrow `dtypes` (it passes in {passing}, still fails in {', '.join(sorted(dtypes['xfail']))})"
    return "narrow `where` (some of its geometries pass)" if entry.where else "narrow `cases` (some of its cases pass)"


@lru_cache(maxsize=4096)
def _matches_target(entry: Expectation, target: str) -> bool:
    """Most entries name a few targets: ruling the others out once per target keeps `apply` cheap."""
    return any(fnmatch.fnmatchcase(target, g) for g in entry.targets)


def status_from_counts(counts: Mapping[str, int]) -> str:
    if counts["xfail"] and counts["xpass"]:
        # A non-strict entry says some of its checks may pass (a defect only some data reveal).
        return "partly fixed" if counts.get("strict", True) else "reproduced"
    if counts["xfail"]:
        return "reproduced"
    if counts["other"]:
        return "changed"  # still failing, but not in the way the entry documents
    if counts["xpass"]:
        return "fixed"
    if counts["not_run"]:
        return "not evaluated"
    if counts.get("conditions_unmet"):
        return "not applicable here"
    if counts.get("in_corpus", 1):
        return "not in this run"
    return "stale"
