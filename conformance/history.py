"""A history of runs, kept in one SQLite file: every check's outcome and output bits, run after run.

A results file tells what one run (or one merged set of runs) found. Questions across runs need them
side by side: since which framework version has a check failed, in which versions did it last pass
(bisection starts there), and which checks change outcome or bits between runs of the same release on
the same machine (flaky, so neither a regression nor a fix). `History` stores each results document's
runs and records once (adding a file twice is a no-op) and answers those questions in SQL, so a
history of many 100,000-check runs is never held in memory.

The file is opened in WAL mode: a report or the CLI can read it while a run adds to it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import groupby, islice
from pathlib import Path
from types import TracebackType
from typing import Any

from packaging.version import InvalidVersion, Version

from conformance.compare import CONFORMANT, NOT_RUN, Outcome
from conformance.merging import runs_of
from conformance.profiles import HOST
from conformance.records import edition, observed, output_identity
from conformance.results import ResultsFileError, read_results, result_key
from conformance.run_environment import framework_versions

SCHEMA_VERSION = 1
DEFAULT_PATH = Path("reports", "history.sqlite")

BATCH = 5_000  # records per executemany: large enough to be fast, small enough never to hold a run
BUSY_TIMEOUT_S = 30.0  # a reader or another writer holds the file at most this long before we give up

Key = tuple[str, str, str]

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE runs(
    id INTEGER PRIMARY KEY, fingerprint TEXT, created TEXT, label TEXT, source TEXT,
    environment TEXT, machine TEXT, interrupted INTEGER, added TEXT
);
CREATE INDEX runs_fingerprint ON runs(fingerprint);
CREATE TABLE checks(
    run INTEGER REFERENCES runs(id), case_id TEXT, target TEXT, dtype TEXT,
    framework_version TEXT, backend_version TEXT, profile TEXT,
    outcome TEXT, observed TEXT, output TEXT, error_ratio REAL
);
CREATE INDEX checks_key ON checks(case_id, target, dtype);
"""

# Every query that returns observations selects these, in this order (`_observation` reads them).
_OBSERVATION_COLUMNS = (
    "c.case_id, c.target, c.dtype, c.run, c.outcome, c.observed, c.output, c.error_ratio,"
    " c.framework_version, c.backend_version, c.profile"
)
# Oldest run first; records of one run in the order the file held them.
_OBSERVATION_ORDER = "c.case_id, c.target, c.dtype, r.created, r.id, c.rowid"


class HistoryError(ValueError):
    pass


@dataclass(frozen=True)
class RunRow:
    id: int
    created: str
    label: str
    source: str
    versions: dict[str, str]  # framework name -> version
    machine: str  # cpu and profile: what makes two runs "the same machine"
    interrupted: bool = False  # the run was killed or stopped: its records are what had finished


@dataclass(frozen=True)
class Observation:
    run: RunRow
    outcome: str
    observed: str  # before known divergences relabelled it (xfail/xpass): what the target did
    output: str | None  # the output bits (`records.output_identity`), None where not comparable
    error_ratio: float | None
    framework_version: str | None
    backend_version: str | None
    profile: str | None


@dataclass(frozen=True)
class CheckHistory:
    key: Key  # (case, target, dtype)
    observations: list[Observation]  # oldest run first
    first_failing: Observation | None  # where the current failing streak began; None unless the newest fails
    last_passing: Observation | None  # the newest conformant observation
    passed_in: list[str]  # editions (version and profile) in which it was conformant, in version order


@dataclass(frozen=True)
class FlakyCheck:
    key: Key
    edition: str  # framework version (+ backend version and profile): "the same release"
    machine: str
    observations: list[Observation]
    what: str  # "outcome" or "bits"


def _outcome(text: str) -> Outcome | None:
    try:
        return Outcome(text)
    except ValueError:  # a newer release's outcome: not one we can call conformant
        return None


def conformant(text: str) -> bool:
    return _outcome(text) in CONFORMANT


def failing(text: str) -> bool:
    """Neither conformant nor not run: a finding."""
    found = _outcome(text)
    return found not in CONFORMANT and found not in NOT_RUN


class FailingChecks:
    """The keys of a run's failing checks, in order, from its records one at a time (a pass's fold:
    conformance/record_passes.py): the report asks the history since when each has failed."""

    def __init__(self) -> None:
        self.keys: list[Key] = []

    def add(self, record: Mapping[str, Any]) -> None:
        if failing(observed(record)):
            self.keys.append(result_key(record))

    def merge(self, later: FailingChecks) -> None:
        self.keys += later.keys


def _in_sql(values: Iterable[str]) -> str:
    # Outcome names are the suite's own constants ([a-z-]), so they are written into the SQL as literals.
    return "(" + ", ".join(f"'{v}'" for v in sorted(values)) + ")"


_CONFORMANT_SQL = _in_sql(CONFORMANT)
_NOT_RUN_SQL = _in_sql(NOT_RUN)


def _glob(pattern: str) -> str:
    """An fnmatch pattern as SQLite's GLOB spells it (the only difference: `[!...]` is `[^...]`)."""
    return re.sub(r"\[!", "[^", pattern)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _machine(environment: Mapping[str, Any]) -> str:
    """The CPU, the profile and the kernel-choosing variables set by hand (TF_ENABLE_ONEDNN_OPTS=0
    without a profile is another machine as far as the kernels go: its runs are not repeats)."""
    # Files written before profiles were recorded ran under the host's defaults.
    machine = f"{environment.get('cpu') or '?'} [{environment.get('profile') or HOST}]"
    variables = (environment.get("cpu_features") or {}).get("variables") or {}
    chosen = ", ".join(f"{name}={value}" for name, value in sorted(variables.items()) if value not in (None, ""))
    return f"{machine} {chosen}" if chosen else machine


def _version_order(text: str) -> tuple[int, Version | str, str]:
    """Sort key for an edition ("2.21.0 [onednn-off]"): by version, then profile; unparsable last."""
    version, _, profile = text.partition(" ")
    try:
        return (0, Version(version), profile)
    except InvalidVersion:
        return (1, text, "")


def _release(observation: Observation) -> str:
    """The edition of an observation, with the backend's version for a front-end (Keras 3)."""
    version = observation.framework_version or ""
    if observation.backend_version:
        version += f" (backend {observation.backend_version})"
    return f"{version} [{observation.profile}]" if observation.profile else version


def _fingerprint(document: Mapping[str, Any], runs: list[dict[str, Any]]) -> str:
    """What makes two documents the same: when it was written, and each run's command, environment,
    time and label. Records are left out, so the fingerprint costs no pass over them."""
    identity = {
        "created": document.get("created"),
        "runs": [{k: run.get(k) for k in ("created", "command", "environment", "label")} for run in runs],
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _batches(rows: Iterable[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, BATCH)):
        yield batch


def _error_ratio(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class History:
    """An SQLite file of runs and their checks (schema `SCHEMA_VERSION`), opened or created."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(f"{path}: cannot open the history file: {exc}") from None
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise HistoryError(f"{path}: not a history file (not an SQLite database: {exc})") from None
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            # Refused files are checked before anything is written to them: WAL comes after.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(
                f"BEGIN; {_SCHEMA} INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
            )
        else:
            self._check_version(tables)
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self._db.execute("PRAGMA foreign_keys = ON")

    def _check_version(self, tables: set[str]) -> None:
        found: object = 0  # no meta table: written before the history was versioned
        if "meta" in tables:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = row[0] if row else 0
        try:
            version = int(str(found))
        except ValueError:
            raise HistoryError(f"{self.path}: not a history file (schema_version is {found!r})") from None
        if version < SCHEMA_VERSION:
            raise HistoryError(
                f"{self.path}: schema version {version}, an older history file; this release reads version"
                f" {SCHEMA_VERSION}. Move it aside and add the results files again to a new history."
            )
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"{self.path}: schema version {version}, written by a newer release; this release reads version"
                f" {SCHEMA_VERSION}. Upgrade dilated-conv-conformance to read it, or use another history file."
            )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # Adding

    def add_file(self, path: Path) -> tuple[int, bool]:
        """`add` a results file (JSON, merged, or a `.jsonl` stream)."""
        try:
            document = read_results(path)
        except ResultsFileError as exc:
            raise HistoryError(str(exc)) from None
        return self.add(document, str(path))

    def add(self, document: dict[str, Any], source: str) -> tuple[int, bool]:
        """Store a results document: one run row per run, one check row per record. Returns (runs
        stored from it, added); added is False, and nothing is written, when this document (the same
        fingerprint) is already here."""
        records = document.get("results")
        if records is None:
            raise HistoryError(f"{source}: not a results document (no 'results')")
        runs = runs_of(document)
        fingerprint = _fingerprint(document, runs)
        # One write transaction from the check to the last record: two processes adding the same
        # file cannot both add it, and a file that fails half-way leaves nothing behind.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            (stored,) = self._db.execute("SELECT COUNT(*) FROM runs WHERE fingerprint = ?", (fingerprint,)).fetchone()
            if stored:
                self._db.execute("ROLLBACK")
                return int(stored), False
            ids = [self._add_run(run, fingerprint, source) for run in runs]
            for batch in _batches(self._check_rows(records, ids, source)):
                self._db.executemany("INSERT INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite rolls back by itself after some errors
                self._db.execute("ROLLBACK")
            raise
        return len(ids), True

    def _add_run(self, run: Mapping[str, Any], fingerprint: str, source: str) -> int:
        environment = run.get("environment") or {}
        cursor = self._db.execute(
            "INSERT INTO runs (fingerprint, created, label, source, environment, machine, interrupted, added)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                fingerprint,
                str(run.get("created") or ""),
                str(run.get("label") or ""),
                source,
                json.dumps(environment, sort_keys=True, default=str),
                _machine(environment),
                int(bool(run.get("interrupted"))),
                _now(),
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    @staticmethod
    def _check_rows(records: Iterable[Mapping[str, Any]], ids: list[int], source: str) -> Iterator[tuple[Any, ...]]:
        number = 0
        try:
            for number, record in enumerate(records):
                index = record.get("run", 0)
                if not isinstance(index, int) or not 0 <= index < len(ids):
                    raise HistoryError(f"{source}: record {number} names run {index!r}; the file has {len(ids)} run(s)")
                yield (
                    ids[index],
                    *result_key(record),
                    record.get("framework_version"),
                    record.get("backend_version"),
                    record.get("profile"),
                    record["outcome"],
                    observed(record),
                    output_identity(record),
                    _error_ratio(record.get("error_ratio")),
                )
        except HistoryError:
            raise
        except KeyError as exc:
            raise HistoryError(f"{source}: record {number} has no {exc}") from None
        except (AttributeError, TypeError, ValueError, OSError) as exc:  # a malformed or unreadable record
            raise HistoryError(f"{source}: record {number}: {exc}") from None

    # Reading

    def runs(self) -> list[RunRow]:
        """Every run, oldest first."""
        return sorted(self._run_rows().values(), key=lambda run: (run.created, run.id))

    def _run_rows(self) -> dict[int, RunRow]:
        # Read afresh by every query (runs are few): another process may have added some since.
        return {
            id_: RunRow(
                id_, created, label, source, framework_versions(json.loads(environment)), machine, bool(interrupted)
            )
            for id_, created, label, source, environment, machine, interrupted in self._db.execute(
                "SELECT id, created, label, source, environment, machine, interrupted FROM runs"
            )
        }

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction: in WAL mode its queries all see the same runs and checks, even while
        another process adds a run (so no check names a run its query did not see)."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            if self._db.in_transaction:  # SQLite ends it itself after some errors
                self._db.execute("COMMIT")

    def _observation(self, row: tuple[Any, ...], runs: Mapping[int, RunRow]) -> Observation:
        return Observation(runs[row[3]], *row[4:])

    def _histories(self, query: str, params: Iterable[str] = ()) -> Iterator[CheckHistory]:
        """One history per key, from a query selecting `_OBSERVATION_COLUMNS` in `_OBSERVATION_ORDER`."""
        runs = self._run_rows()
        rows = self._db.execute(query, tuple(params))
        for key, grouped in groupby(rows, key=lambda row: (row[0], row[1], row[2])):
            yield _check_history(key, [self._observation(row, runs) for row in grouped])

    def checks(
        self, case: str = "*", target: str = "*", dtype: str = "*", failing_only: bool = False
    ) -> list[CheckHistory]:
        """The history of every check whose case, target and dtype match these fnmatch patterns;
        with failing_only, of those whose newest observation is a failure."""
        where = "c.case_id GLOB ? AND c.target GLOB ? AND c.dtype GLOB ?"
        params = [_glob(case), _glob(target), _glob(dtype)]
        if failing_only:
            # Chosen in SQL, so a large history's passing checks never reach Python.
            where += f""" AND (c.case_id, c.target, c.dtype) IN (
                SELECT case_id, target, dtype FROM (
                    SELECT c.case_id, c.target, c.dtype, c.observed, ROW_NUMBER() OVER (
                        PARTITION BY c.case_id, c.target, c.dtype ORDER BY r.created DESC, r.id DESC, c.rowid DESC
                    ) AS newest
                    FROM checks c JOIN runs r ON r.id = c.run
                    WHERE c.case_id GLOB ? AND c.target GLOB ? AND c.dtype GLOB ?
                ) WHERE newest = 1 AND observed NOT IN {_CONFORMANT_SQL} AND observed NOT IN {_NOT_RUN_SQL}
            )"""
            params += params
        query = (
            f"SELECT {_OBSERVATION_COLUMNS} FROM checks c JOIN runs r ON r.id = c.run"
            f" WHERE {where} ORDER BY {_OBSERVATION_ORDER}"
        )
        with self._snapshot():
            histories = list(self._histories(query, params))
        # SQL chose them already; this agrees with it, and also drops outcomes this release does not know.
        return [h for h in histories if h.first_failing is not None] if failing_only else histories

    def since(self, keys: Iterable[Key]) -> dict[Key, CheckHistory]:
        """The history of each of these checks that the history holds (those it does not are left out)."""
        query = (
            f"SELECT {_OBSERVATION_COLUMNS} FROM temp.wanted w"
            " JOIN checks c ON c.case_id = w.case_id AND c.target = w.target AND c.dtype = w.dtype"
            f" JOIN runs r ON r.id = c.run ORDER BY {_OBSERVATION_ORDER}"
        )
        with self._snapshot(), self._wanted(keys):
            return {history.key: history for history in self._histories(query)}

    def flaky(self, case: str = "*", target: str = "*", dtype: str = "*") -> list[FlakyCheck]:
        """Checks whose observed outcome, or output bits, differ between runs of the same release on
        the same machine. Bits that differ across versions are a change, not flakiness; a check not
        run (skip, unsupported) says nothing of its outcome; output None (no valid output, or it
        raised) is never compared."""
        # COUNT(DISTINCT) skips NULLs: outputs that are None, and the outcomes of checks not run.
        groups_query = f"""
            SELECT c.case_id, c.target, c.dtype, c.framework_version, c.backend_version, c.profile, r.machine,
                COUNT(DISTINCT CASE WHEN c.observed NOT IN {_NOT_RUN_SQL} THEN c.observed END) AS outcomes,
                COUNT(DISTINCT c.output) AS outputs
            FROM checks c JOIN runs r ON r.id = c.run
            WHERE c.case_id GLOB ? AND c.target GLOB ? AND c.dtype GLOB ?
            GROUP BY c.case_id, c.target, c.dtype, c.framework_version, c.backend_version, c.profile, r.machine
            HAVING outcomes > 1 OR outputs > 1
            ORDER BY c.case_id, c.target, c.dtype, c.framework_version, c.backend_version, c.profile, r.machine"""
        group_query = (
            f"SELECT {_OBSERVATION_COLUMNS} FROM checks c JOIN runs r ON r.id = c.run"
            " WHERE c.case_id = ? AND c.target = ? AND c.dtype = ? AND c.framework_version IS ?"
            f" AND c.backend_version IS ? AND c.profile IS ? AND r.machine = ? ORDER BY {_OBSERVATION_ORDER}"
        )
        found = []
        with self._snapshot():
            runs = self._run_rows()
            groups = self._db.execute(groups_query, (_glob(case), _glob(target), _glob(dtype))).fetchall()
            for group in groups:  # few: each one is a finding
                key, machine, outcomes = (group[0], group[1], group[2]), group[6], group[7]
                rows = self._db.execute(group_query, group[:7])
                observations = [self._observation(row, runs) for row in rows]
                what = "outcome" if outcomes > 1 else "bits"
                found.append(FlakyCheck(key, _release(observations[0]), machine, observations, what))
        return found

    def last_passing_version(self, package: str, keys: Iterable[Key]) -> str | None:
        """The highest version of distribution `package` among runs in which these checks passed:
        every one of them the run ran was conformant, and it ran at least one (checks not run, and
        checks the run does not hold, are ignored). None if no run qualifies."""
        query = f"""
            SELECT r.environment FROM temp.wanted w
            JOIN checks c ON c.case_id = w.case_id AND c.target = w.target AND c.dtype = w.dtype
            JOIN runs r ON r.id = c.run
            GROUP BY r.id
            HAVING SUM(c.observed IN {_CONFORMANT_SQL}) > 0
               AND SUM(c.observed NOT IN {_CONFORMANT_SQL} AND c.observed NOT IN {_NOT_RUN_SQL}) = 0"""
        with self._snapshot(), self._wanted(keys):
            passing = self._db.execute(query).fetchall()
        best: tuple[Version, str] | None = None
        for (environment,) in passing:
            text = (json.loads(environment).get("packages") or {}).get(package)
            try:
                version = Version(str(text))
            except InvalidVersion:  # not installed in that run (None), or a version that cannot be ordered
                continue
            if best is None or version > best[0]:
                best = (version, str(text))
        return best[1] if best else None

    @contextmanager
    def _wanted(self, keys: Iterable[Key]) -> Iterator[None]:
        """The keys asked about as a temporary table `wanted(case_id, target, dtype)`: thousands of
        keys are one join, not thousands of queries."""
        self._db.execute("DROP TABLE IF EXISTS temp.wanted")
        self._db.execute(
            "CREATE TEMP TABLE wanted(case_id TEXT, target TEXT, dtype TEXT, UNIQUE(case_id, target, dtype))"
        )
        try:
            for batch in _batches(tuple(key) for key in keys):
                self._db.executemany("INSERT OR IGNORE INTO temp.wanted VALUES (?, ?, ?)", batch)
            yield
        finally:
            self._db.execute("DROP TABLE IF EXISTS temp.wanted")


def _check_history(key: Key, observations: list[Observation]) -> CheckHistory:
    """first_failing, last_passing and passed_in of one check's observations (oldest first)."""
    streak: Observation | None = None
    last_passing: Observation | None = None
    passed_in: set[str] = set()
    for observation in observations:
        if conformant(observation.observed):
            streak, last_passing = None, observation
            found = edition({"framework_version": observation.framework_version, "profile": observation.profile})
            if found:
                passed_in.add(found)
        elif failing(observation.observed) and streak is None:
            streak = observation  # checks not run neither start nor end a streak
    newest_fails = bool(observations) and failing(observations[-1].observed)
    return CheckHistory(
        key=key,
        observations=observations,
        first_failing=streak if newest_fails else None,
        last_passing=last_passing,
        passed_in=sorted(passed_in, key=_version_order),
    )


# Failing checks a report lists with their history: enough for any real regression, small enough
# that a run where everything fails still opens at once (the CLI lists them all).
REPORT_CHECKS = 2_000


def report_section(store: History, source: Path, failing: Iterable[Key]) -> dict[str, Any]:
    """What the report shows of a history: for each failing check, since when it fails, when it
    last passed and in which versions it passed (`document["history"]`, drawn by report.js)."""
    keys = sorted(set(failing))
    found = store.since(keys[:REPORT_CHECKS])

    def when(seen: Observation | None) -> dict[str, Any] | None:
        return None if seen is None else {"created": seen.run.created, "version": _release(seen)}

    checks = [
        {
            "case": key[0],
            "target": key[1],
            "dtype": key[2],
            "failing_since": when(check.first_failing),
            "last_passing": when(check.last_passing),
            "passed_in": check.passed_in,
            "runs": len(check.observations),
        }
        for key, check in sorted(found.items())
    ]
    return {"path": str(source), "runs": len(store.runs()), "failing": len(keys), "checks": checks}
