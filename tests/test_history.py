"""The run history (conformance/history.py), on small results documents made by hand: no framework runs."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance.history import SCHEMA_VERSION, History, HistoryError
from conformance.results import atomic_write, write_json

CASE = "documents/tf-4x4-rate2-same"
TARGET = "torch.conv2d-cpu"
KEY = (CASE, TARGET, "float32")


def record(
    outcome: str = "pass",
    *,
    case: str = CASE,
    target: str = TARGET,
    dtype: str = "float32",
    version: str = "1.0",
    output: str | None = "aaaa",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "case": case,
        "target": target,
        "dtype": dtype,
        "framework": "torch",
        "framework_version": version,
        "outcome": outcome,
        "expect": "reference",
        "output_sha256": output,
        "error_ratio": 0.25,
        **extra,
    }


def document(
    records: list[dict[str, Any]],
    *,
    version: str = "1.0",
    created: str = "2025-01-01T00:00:00+00:00",
    cpu: str = "Xeon",
    profile: str = "host",
    interrupted: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "created": created,
        "command": ["pytest", "cases"],
        "environment": {
            "cpu": cpu,
            "profile": profile,
            "packages": {"torch": version, "numpy": "2.0.0"},
            "framework_versions": {"torch": version},
        },
        "interrupted": interrupted,
        "results": records,
    }


def release(version: str, day: int, *records: dict[str, Any]) -> dict[str, Any]:
    """One run of torch `version` on day `day`, holding these records (at that version)."""
    return document(
        [{**r, "framework_version": version} for r in records],
        version=version,
        created=f"2025-01-{day:02d}T00:00:00+00:00",
    )


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    with History(tmp_path / "history.sqlite") as opened:
        yield opened


def test_add_stores_runs_and_is_idempotent(history: History, tmp_path: Path) -> None:
    first = document([record(), record("mismatch", dtype="float16")], interrupted={"signal": "SIGTERM"})
    assert history.add(first, "a.json") == (1, True)
    assert history.add(first, "again.json") == (1, False)

    path = tmp_path / "reports" / "results.json"
    atomic_write(path, lambda handle: write_json(document([record()], created="2025-01-02T00:00:00+00:00"), handle))
    assert history.add_file(path) == (1, True)
    assert history.add_file(path) == (1, False)

    runs = history.runs()
    assert [(r.source, r.created, r.machine, r.versions, r.interrupted) for r in runs] == [
        ("a.json", "2025-01-01T00:00:00+00:00", "Xeon [host]", {"torch": "1.0"}, True),
        (str(path), "2025-01-02T00:00:00+00:00", "Xeon [host]", {"torch": "1.0"}, False),
    ]
    (check,) = history.checks(dtype="float32")
    assert [o.run.source for o in check.observations] == ["a.json", str(path)]  # no doubled rows
    assert check.observations[0].error_ratio == 0.25
    assert check.observations[0].output == "aaaa"


def test_add_file_refuses_what_is_not_a_results_file(history: History, tmp_path: Path) -> None:
    path = tmp_path / "nonsense.json"
    path.write_text('{"no": "results"}')
    with pytest.raises(HistoryError, match=r"nonsense\.json: not a results file"):
        history.add_file(path)
    assert history.runs() == []


def test_a_record_naming_a_missing_run_adds_nothing(history: History) -> None:
    broken = {**document([record(run=3)]), "runs": [{"label": "only", "environment": {}, "created": "x"}]}
    with pytest.raises(HistoryError, match=r"m\.json: record 0 names run 3; the file has 1 run"):
        history.add(broken, "m.json")
    assert history.runs() == []  # the transaction was rolled back


def test_merged_document_gives_one_run_row_per_run(history: History) -> None:
    runs = [
        {"label": label, "source": f"{label}.json", "created": f"2025-01-0{day}T00:00:00+00:00", "command": []}
        | {"environment": {"cpu": "Xeon", "framework_versions": {"torch": version}, "packages": {"torch": version}}}
        for label, day, version in (("old", 1, "2.1.0"), ("new", 2, "2.2.0"))
    ]
    merged = {
        "kind": "merged",
        "created": "2025-02-01T00:00:00+00:00",
        "runs": runs,
        "results": [record(version="2.1.0", run=0), record("mismatch", version="2.2.0", run=1)],
    }
    assert history.add(merged, "merged.json") == (2, True)
    assert history.add(merged, "merged.json") == (2, False)
    assert [(r.label, r.versions["torch"], r.source) for r in history.runs()] == [
        ("old", "2.1.0", "merged.json"),
        ("new", "2.2.0", "merged.json"),
    ]
    (check,) = history.checks()
    assert [(o.run.label, o.observed) for o in check.observations] == [("old", "pass"), ("new", "mismatch")]
    assert check.first_failing is check.observations[1]


def test_checks_finds_where_the_failing_streak_began(history: History) -> None:
    history.add(release("1.0", 1, record("pass")), "1.0")
    history.add(release("1.1", 2, record("pass")), "1.1")
    history.add(release("1.2", 3, record("mismatch")), "1.2")
    history.add(release("1.3", 4, record("mismatch")), "1.3")

    (check,) = history.checks()
    assert check.key == KEY
    assert [o.framework_version for o in check.observations] == ["1.0", "1.1", "1.2", "1.3"]
    assert check.first_failing is not None and check.first_failing.framework_version == "1.2"
    assert check.last_passing is not None and check.last_passing.framework_version == "1.1"
    assert check.passed_in == ["1.0", "1.1"]


def test_a_streak_ended_by_a_pass_begins_again_after_it(history: History) -> None:
    history.add(release("1.0", 1, record("mismatch")), "1.0")
    history.add(release("1.1", 2, record("pass")), "1.1")
    history.add(release("1.1.1", 3, record("skip")), "1.1.1")  # not run: neither starts nor ends a streak
    history.add(release("1.2", 4, record("error")), "1.2")
    history.add(release("1.3", 5, record("skip")), "1.3")
    history.add(release("1.4", 6, record("mismatch")), "1.4")
    (check,) = history.checks()
    assert check.first_failing is not None and check.first_failing.framework_version == "1.2"
    history.add(release("1.5", 7, record("unsupported")), "1.5")
    assert history.checks()[0].first_failing is None  # the newest was not run


def test_a_check_that_passes_again_has_no_failing_streak(history: History) -> None:
    history.add(release("1.0", 1, record("mismatch")), "1.0")
    history.add(release("1.1", 2, record("pass", profile="onednn-off")), "1.1")
    history.add(release("1.10", 3, record("pass")), "1.10")
    history.add(release("1.9", 4, record("pass")), "1.9")  # released later, but an older version

    (check,) = history.checks()
    assert check.first_failing is None
    assert check.last_passing is not None and check.last_passing.framework_version == "1.9"
    assert check.passed_in == ["1.1 [onednn-off]", "1.9", "1.10"]  # version order, not text order


def test_failing_only_and_globs(history: History) -> None:
    history.add(
        release(
            "1.0",
            1,
            record("pass"),
            record("pass", dtype="float16"),
            record("pass", case="documents/other", target="jax.conv-cpu"),
        ),
        "1.0",
    )
    history.add(
        release(
            "1.1",
            2,
            record("pass"),
            record("xfail", dtype="float16", observed_outcome="mismatch"),
            record("error", case="documents/other", target="jax.conv-cpu"),
            record("skip", case="documents/other", target="jax.conv-cpu", dtype="float16"),
        ),
        "1.1",
    )
    failing = history.checks(failing_only=True)
    assert [c.key for c in failing] == [("documents/other", "jax.conv-cpu", "float32"), (CASE, TARGET, "float16")]
    assert [c.key for c in history.checks(target="torch.*", failing_only=True)] == [(CASE, TARGET, "float16")]
    assert [c.key for c in history.checks(dtype="float[!1]*")] == [
        ("documents/other", "jax.conv-cpu", "float32"),
        KEY,
    ]
    assert [c.key for c in history.checks(case="documents/tf-*", dtype="*16")] == [(CASE, TARGET, "float16")]
    assert history.checks(case="nothing*") == []


def test_flaky_by_outcome_within_one_version_only(history: History) -> None:
    history.add(release("1.0", 1, record("pass")), "a")
    history.add(release("1.0", 2, record("mismatch")), "b")
    (flaky,) = history.flaky()
    assert flaky.key == KEY
    assert flaky.what == "outcome"
    assert flaky.edition == "1.0"
    assert flaky.machine == "Xeon [host]"
    assert [o.observed for o in flaky.observations] == ["pass", "mismatch"]


def test_an_outcome_changing_across_versions_is_not_flaky(history: History) -> None:
    history.add(release("1.0", 1, record("pass", output="aaaa")), "a")
    history.add(release("1.1", 2, record("mismatch", output="bbbb")), "b")
    history.add(release("1.1", 3, record("skip", output=None)), "c")  # not run: says nothing
    assert history.flaky() == []


def test_the_same_version_on_another_machine_is_not_flaky(history: History) -> None:
    history.add(document([record("pass")], cpu="Xeon"), "a")
    history.add(document([record("mismatch")], cpu="EPYC", created="2025-01-02T00:00:00+00:00"), "b")
    assert history.flaky() == []


def test_kernel_choosing_variables_set_by_hand_make_another_machine(history: History) -> None:
    """TF_ENABLE_ONEDNN_OPTS=0 without a profile takes other kernels: a changed outcome is not flakiness."""
    onednn_off = document([record("mismatch")], created="2025-01-02T00:00:00+00:00")
    onednn_off["environment"]["cpu_features"] = {"variables": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
    history.add(document([record("pass")]), "a")
    history.add(onednn_off, "b")
    assert history.flaky() == []
    again = document([record("pass")], created="2025-01-03T00:00:00+00:00")
    again["environment"]["cpu_features"] = {"variables": {"TF_ENABLE_ONEDNN_OPTS": "0"}}
    history.add(again, "c")
    (flaky,) = history.flaky()
    assert flaky.machine == "Xeon [host] TF_ENABLE_ONEDNN_OPTS=0"


def test_flaky_by_bits(history: History) -> None:
    history.add(release("1.0", 1, record("pass", output="aaaa"), record("pass", dtype="float16")), "a")
    history.add(release("1.0", 2, record("pass", output="bbbb"), record("pass", dtype="float16")), "b")
    (flaky,) = history.flaky()
    assert (flaky.key, flaky.what) == (KEY, "bits")
    assert [o.output for o in flaky.observations] == ["aaaa", "bbbb"]
    assert history.flaky(dtype="float16") == []


def test_no_valid_output_is_never_flaky_by_bits(history: History) -> None:
    garbage = {"expect": "no-valid-output"}
    history.add(release("1.0", 1, record("pass", output="aaaa", **garbage)), "a")
    history.add(release("1.0", 2, record("pass", output="bbbb", **garbage)), "b")
    history.add(release("1.0", 3, record("pass", output=None)), "c")  # raised: no output at all
    assert history.flaky() == []
    (check,) = history.checks()
    assert [o.output for o in check.observations] == [None, None, None]


def test_last_passing_version(history: History) -> None:
    other = ("documents/other", TARGET, "float32")
    history.add(release("1.0", 1, record("pass"), record("pass", case=other[0])), "a")
    history.add(release("1.10", 2, record("pass"), record("skip", case=other[0])), "b")  # skipped: ignored
    history.add(release("1.20", 3, record("pass"), record("mismatch", case=other[0])), "c")
    history.add(release("1.30", 4, record("mismatch")), "d")
    history.add(release("2.0", 5, record("skip")), "e")  # ran none of them

    assert history.last_passing_version("torch", [KEY, other]) == "1.10"  # 1.20 failed `other`
    assert history.last_passing_version("torch", [other]) == "1.0"
    assert history.last_passing_version("torch", [KEY]) == "1.20"
    assert history.last_passing_version("jax", [KEY]) is None  # not installed in any run
    assert history.last_passing_version("torch", [("documents/none", TARGET, "float32")]) is None


def test_since_reads_only_the_keys_asked_for(history: History) -> None:
    history.add(release("1.0", 1, record("pass"), record("pass", dtype="float16")), "a")
    history.add(release("1.1", 2, record("mismatch"), record("pass", dtype="float16")), "b")
    missing = ("documents/none", TARGET, "float32")
    many = [(f"documents/c{i}", TARGET, "float32") for i in range(6_000)]  # more than one insert batch
    found = history.since([KEY, missing, KEY, *many])
    assert list(found) == [KEY]
    assert found[KEY].first_failing is not None and found[KEY].first_failing.run.source == "b"
    assert [o.observed for o in found[KEY].observations] == ["pass", "mismatch"]
    assert history.since([]) == {}


def _sqlite_with(path: Path, script: str) -> None:
    db = sqlite3.connect(path)
    db.executescript(script)
    db.close()


def test_an_older_history_file_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite"
    _sqlite_with(
        old, "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '0');"
    )
    with pytest.raises(HistoryError, match=r"old\.sqlite: schema version 0, an older history file"):
        History(old)
    unversioned = tmp_path / "unversioned.sqlite"
    _sqlite_with(unversioned, "CREATE TABLE runs(id INTEGER PRIMARY KEY);")
    with pytest.raises(HistoryError, match=r"unversioned\.sqlite: schema version 0, an older history file"):
        History(unversioned)


def test_a_newer_history_file_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    _sqlite_with(
        newer, "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '2');"
    )
    with pytest.raises(HistoryError, match=r"newer\.sqlite: schema version 2, written by a newer release") as caught:
        History(newer)
    assert f"reads version {SCHEMA_VERSION}" in str(caught.value)


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"results": []}\n' * 100)
    with pytest.raises(HistoryError, match=r"results\.json: not a history file \(not an SQLite database"):
        History(path)
    assert path.read_text() == '{"results": []}\n' * 100  # left as it was


def test_a_history_reopens_with_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    with History(path) as history:
        history.add(release("1.0", 1, record()), "a")
    with History(path) as history:
        assert [r.source for r in history.runs()] == ["a"]
        assert history.add(release("1.0", 1, record()), "a") == (1, False)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_reader_sees_no_half_added_run(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    seen: list[int] = []
    with History(path) as writer, History(path) as reader:

        def records() -> Iterator[dict[str, Any]]:
            yield record()
            seen.append(len(reader.runs()))  # while the writer's transaction is open
            yield record(dtype="float16")

        assert writer.add(document([]) | {"results": records()}, "a") == (1, True)
        assert seen == [0]
        assert [c.key[2] for c in reader.checks()] == ["float16", "float32"]
