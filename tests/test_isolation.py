"""Fault isolation under xdist: a segfault, an abort, a GIL-holding hang and a runaway allocation
each cost only their own checks, appear in the results and the report with the reason, and the run
finishes. Real processes, real signals; the faulty adapters come from tests/fault_adapters.py."""

from __future__ import annotations

import gc
import json
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conformance import held_memory, isolation, lifetime
from conformance.adapters.modes import gpu_driver_present
from conformance.report import embedded_data
from conformance.results import read_stream
from tests.fault_adapters import FAULT_ADAPTERS
from tests.projects import child_environment, write_project

CASES = 5
CRASH_LIMIT = 2
LOAD_S = 1
WORKERS = 2
TIMEOUT_S = 5  # generous: under a loaded CI machine a trivial check can take seconds

CASE = """
[[case]]
id = "c{n}"
input = {{ generator = "integers", seed = {n}, low = -3, high = 3, shape = [1, {size}, {size}, 2] }}
kernel = {{ generator = "integers", seed = 9, low = -2, high = 2, shape = [3, 3, 2, 2] }}
rate = 2
"""

# A composite calls its framework several times per check: it runs under the same guard.
COMPOSITE = """
[[stack]]
id = "hdc-1-2-3"
rates = [1, 2, 3]
receptive_field = 13
holes = false
"""


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    faults = [type(adapter).__name__ for adapter in FAULT_ADAPTERS]
    corpus = {"faults.toml": "".join(CASE.format(n=n, size=6 + n) for n in range(CASES)), "composites.toml": COMPOSITE}
    directory = write_project(tmp_path_factory.mktemp("faults"), faults, corpus)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", str(WORKERS), "-k", "numpy or faulty"]
    command += [
        f"--conformance-timeout={TIMEOUT_S}",
        f"--conformance-load-timeout={LOAD_S}",
        "--conformance-memory-limit=1G",
    ]
    command += [f"--conformance-crash-limit={CRASH_LIMIT}", "--expectations=none"]
    command += ["--conformance-json=out/results.json", "--conformance-html=out/index.html"]
    env = child_environment()
    finished = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=600)
    assert (directory / "out" / "results.json").exists(), finished.stdout[-4000:] + finished.stderr[-4000:]
    return {
        "process": finished,
        "document": json.loads((directory / "out" / "results.json").read_text()),
        "html": (directory / "out" / "index.html").read_text(),
    }


def records_of(run: dict[str, Any], op: str, suite: str = "faults/") -> list[dict[str, Any]]:
    return [r for r in run["document"]["results"] if r["target"] == f"faulty.{op}-cpu" and r["case"].startswith(suite)]


def test_the_run_finishes_and_reports_every_check(faulty_run: dict[str, Any]) -> None:
    process = faulty_run["process"]
    assert process.returncode == 1, process.stdout[-3000:]  # failures, not an internal error (3) or abort
    assert "maximum crashed workers reached" not in process.stdout
    for op in ("segfault", "import_crash", "abort", "hang", "import_hang"):  # the terminal names each broken target
        assert f"faulty.{op}-cpu: " in process.stdout and "remaining checks were skipped" in process.stdout
    records = faulty_run["document"]["results"]
    numpy_records = [r for r in records if r["framework"] == "numpy" and r["case"].startswith("faults/")]
    assert len(numpy_records) == CASES and {r["outcome"] for r in numpy_records} == {"pass"}
    for op in ("segfault", "import_crash", "abort", "hang", "import_hang", "hog"):
        assert len(records_of(faulty_run, op)) == CASES, op
    # The report holds the same results, one cell per record.
    model = embedded_data(faulty_run["html"])
    assert sum(len(row["cells"]) for row in model["rows"]) == len(records)


@pytest.mark.parametrize(
    ("op", "outcome", "words"),
    [
        ("segfault", "crash", "Segmentation fault"),
        ("import_crash", "crash", "Segmentation fault"),
        ("abort", "crash", "Aborted"),
        ("hang", "timeout", f"time limit of {TIMEOUT_S} s in the framework call"),
        # The first check of a target in a worker gets the load allowance on top; later ones do not.
        ("import_hang", "timeout", "s loading the framework (--conformance-timeout"),
    ],
)
def test_a_killed_worker_costs_its_own_checks_until_the_crash_limit(
    faulty_run: dict[str, Any], op: str, outcome: str, words: str
) -> None:
    # The target's checks: the cases' and the composite's (2 dtypes), which run under the same guard.
    records = records_of(faulty_run, op, suite="")
    counts = Counter(r["outcome"] for r in records)
    # A death while loading the framework stops the target at once (no case would load it
    # differently); others after the crash limit. Items already running elsewhere may die first.
    least = 1 if op.startswith("import_") else CRASH_LIMIT
    assert least <= counts[outcome] <= least + WORKERS - 1, counts
    assert counts[outcome] + counts["skip"] == CASES + 2, counts
    for record in records:
        if record["outcome"] == outcome:
            assert words in record["message"], record["message"]
            assert "fault_adapters.py" in record["message"]  # the stack reaches the failing frame
            assert record["input_shape"] and record["framework"] == "faulty"
            case_check = record["case"].startswith("faults/")
            if case_check and not op.startswith("import_"):  # died in the call: the full record survived
                assert record["reproduction"] and record["input_sha256"]
        else:
            assert f"--conformance-crash-limit is {CRASH_LIMIT}" in record["message"]


@pytest.mark.parametrize(
    ("op", "outcome", "words"),
    [
        ("segfault", "crash", "Segmentation fault"),
        ("abort", "crash", "Aborted"),
        ("hang", "timeout", "in the framework call"),
        ("import_hang", "timeout", "loading the framework"),
        ("hog", "error", "MemoryError"),
    ],
)
def test_a_composite_is_guarded_like_any_check(faulty_run: dict[str, Any], op: str, outcome: str, words: str) -> None:
    """A composite whose framework crashes, hangs or runs out of memory is reported on its own record
    (in both dtypes), or skipped once the target is stopped; it never takes the run down with it."""
    records = records_of(faulty_run, op, suite="composites/")
    assert len(records) == 2, records  # float32 and float64
    for record in records:
        assert record["outcome"] in (outcome, "skip"), record
        if record["outcome"] == outcome:
            assert words in record["message"] and record["case"] == "composites/hdc-1-2-3", record["message"]
        else:
            assert f"--conformance-crash-limit is {CRASH_LIMIT}" in record["message"]


def test_runaway_allocation_is_an_error_inside_the_check(faulty_run: dict[str, Any]) -> None:
    records = records_of(faulty_run, "hog")
    assert {r["outcome"] for r in records} == {"error"}  # refused, not killed: no crash, no skip
    for record in records:
        assert "MemoryError" in record["message"] and "1.00 GiB: --conformance-memory-limit" in record["message"]


@pytest.mark.skipif(gpu_driver_present(), reason="no default memory limit on a machine with a GPU driver")
def test_the_default_memory_limit_is_shared_among_the_workers(tmp_path: Path) -> None:
    corpus = {"faults.toml": CASE.format(n=0, size=6)}
    write_project(tmp_path, ["MemoryHog"], corpus)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", str(WORKERS), "-m", "faulty"]
    command += ["--expectations=none", "--conformance-json=out/results.json", "--conformance-html=none"]
    subprocess.run(command, cwd=tmp_path, env=child_environment(), capture_output=True, timeout=300, check=False)
    (record,) = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    share = isolation.format_size(isolation.default_memory_limit(WORKERS) or 0)
    assert f"each worker may use {share}" in record["message"], record["message"]


def test_a_batch_whose_worker_dies_loses_none_of_its_checks(tmp_path: Path) -> None:
    """--conformance-batch case: one item per case x dtype runs numpy, then a segfault, then a hang.
    The check that killed the worker is the one reported, with the checks its batch had finished;
    the batch is queued again and runs the checks it had not reached, and only those, on a new worker."""
    corpus = {"faults.toml": "".join(CASE.format(n=n, size=6 + n) for n in range(3))}
    directory = write_project(tmp_path, ["Segfault", "NativeHang"], corpus)
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "1",
        "--conformance-batch=case", "--conformance-target=numpy.*", "--conformance-target=faulty.*",
        f"--conformance-timeout={TIMEOUT_S}", f"--conformance-load-timeout={LOAD_S}", "--conformance-crash-limit=1",
        "--expectations=none", "--conformance-json=out/results.json", "--conformance-html=none",
        "-rf",  # (each failing check's own text, on request)
    ]  # fmt: skip
    finished = subprocess.run(command, cwd=directory, env=child_environment(), capture_output=True, text=True)
    assert finished.returncode == 1, finished.stdout[-4000:] + finished.stderr[-4000:]
    records = json.loads((directory / "out" / "results.json").read_text())["results"]
    outcomes = {(r["case"], r["target"].split("-")[0]): r["outcome"] for r in records}
    assert len(records) == len(outcomes) == 9  # every check once: none lost, none twice
    by_target = {
        target: sorted(outcome for (_, t), outcome in outcomes.items() if t == target)
        for target in ("numpy.im2col", "faulty.segfault", "faulty.hang")
    }
    # Each fault costs one check (crash limit 1: then its target is stopped); the numpy checks all ran.
    assert by_target == {
        "numpy.im2col": ["pass"] * 3,
        "faulty.segfault": ["crash", "skip", "skip"],
        "faulty.hang": ["skip", "skip", "timeout"],
    }
    assert "Segmentation fault" in next(r for r in records if r["outcome"] == "crash")["message"]
    # The check's one record, as fault isolation wrote it out right before the call: the data's
    # hashes and the reproduction, not the bare fields a record starts with.
    for died in (r for r in records if r["outcome"] in ("crash", "timeout")):
        assert died["input_sha256"] and died["kernel_sha256"], died
        assert "# fault injection: tests/fault_adapters.py" in died["reproduction"], died["reproduction"]
    (crashed,) = [case for (case, target), outcome in outcomes.items() if outcome == "crash"]
    assert outcomes[(crashed, "numpy.im2col")] == "pass"  # finished before the segfault: reported once
    # The segfault's batch had not reached its hang: queued again, it ran that check alone, which the
    # hang's time limit ended in turn. (With one worker it runs first: xdist puts an item queued again
    # at the head of the queue, and the dead worker's other items behind it.)
    assert outcomes[(crashed, "faulty.hang")] == "timeout"
    assert "the rest of its batch: 1 check(s) finished, 1 queued again" in finished.stdout
    assert "3 items" in finished.stdout or "3 item" in finished.stdout  # one item per case x dtype


def _batch_with_a_death(
    tmp_path: Path, name: str, death: str, replicates: bool = False, **env: str
) -> tuple[list[dict[str, Any]], str]:
    """Two cases as batches of the NumPy target and Slow on one worker, with `death` appended to the
    project's conftest: the run's records and its output. Two sizes, or with `replicates` one: then
    the two cases differ only in their data and share one batch."""
    corpus = {f"{name}.toml": "".join(CASE.format(n=n, size=6 if replicates else 6 + n) for n in range(2))}
    directory = write_project(tmp_path, ["Slow"], corpus)
    with (directory / "conftest.py").open("a") as conftest:
        conftest.write(death)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "1", "--conformance-batch=case"]
    command += ["--conformance-target=numpy.*", "--conformance-target=paced.*", "--expectations=none"]
    command += ["--conformance-json=out/results.json", "--conformance-html=none"]
    finished = subprocess.run(command, cwd=directory, env=child_environment(**env), capture_output=True, text=True)
    records = json.loads((directory / "out" / "results.json").read_text())["results"]
    return records, finished.stdout + finished.stderr


DIE_BETWEEN_CHECKS = """

import os, signal
from conformance import isolation

_journal_check = isolation.WorkerGuard.batch_finished_check


def _die_after_numpy(self, record_text):  # a death in the harness's code between two checks
    _journal_check(self, record_text)
    if '"numpy.im2col-cpu"' in record_text:
        os.kill(os.getpid(), signal.SIGKILL)


isolation.WorkerGuard.batch_finished_check = _die_after_numpy
"""


@pytest.mark.parametrize("replicates", [False, True])
def test_a_batch_whose_worker_dies_between_checks_charges_no_check(tmp_path: Path, replicates: bool) -> None:
    """The worker dies after a check of its batch finished and before the next started: that check is
    reported as it finished (not as the crash, nor twice), and the batch runs the others again. A
    batch of two replicates dies twice (after each case's NumPy check) and still reports every check
    once: the first time while its NumPy answers, judged together, were being written down (the
    second answer, not yet in the journal, is asked again), the second time after its last one."""
    records, output = _batch_with_a_death(tmp_path, "between", DIE_BETWEEN_CHECKS, replicates)
    outcomes = Counter((r["case"], r["target"], r["outcome"]) for r in records)
    assert outcomes == Counter(
        {(f"between/c{n}", target, "pass"): 1 for n in range(2) for target in ("numpy.im2col-cpu", "paced.slow-cpu")}
    ), output[-4000:]
    assert "its worker died between two checks of its batch, after numpy.im2col-cpu float32 had finished" in output
    judging = "its worker died between two checks of its batch, judging numpy.im2col-cpu float32's answers"
    assert (judging in output) == replicates, output[-4000:]
    assert ("c0[batch-float32+1]" in output) == replicates  # (the crash names the batch)


DIE_STARTING_A_BATCH = """

import os, signal
from pathlib import Path
from conformance import isolation

_start_batch = isolation.WorkerGuard.batch_started


def _die_once_starting(self, nodeid, planned):  # a death in the harness's code before the first check
    _start_batch(self, nodeid, planned)
    marker = Path(os.environ["CONFORMANCE_TEST_DIED"])
    if not marker.exists():
        marker.write_text(nodeid)
        os.kill(os.getpid(), signal.SIGKILL)


isolation.WorkerGuard.batch_started = _die_once_starting
"""


def test_a_batch_whose_worker_dies_before_its_first_check_reports_every_check(tmp_path: Path) -> None:
    """No check ran and none is charged: the batch's checks are reported as not run, with why."""
    records, output = _batch_with_a_death(
        tmp_path, "early", DIE_STARTING_A_BATCH, CONFORMANCE_TEST_DIED=str(tmp_path / "died")
    )
    outcomes = Counter((r["case"], r["target"], r["outcome"]) for r in records)
    died_in = (tmp_path / "died").read_text().split("::")[1].split("[")[0]
    expected = {
        (f"early/c{n}", target, "skip" if f"c{n}" == died_in else "pass"): 1
        for n in range(2)
        for target in ("numpy.im2col-cpu", "paced.slow-cpu")
    }
    assert outcomes == Counter(expected), output[-4000:]
    assert all("died outside any check" in r["message"] for r in records if r["outcome"] == "skip")


def test_a_batch_queued_again_that_never_runs_again_still_reports_every_check(tmp_path: Path) -> None:
    """No worker may be restarted (--max-worker-restart=0): the run ends at the segfault's crash,
    before its batch, queued again, can run the hang, which is reported as not run, and why."""
    corpus = {"faults.toml": CASE.format(n=0, size=6)}
    directory = write_project(tmp_path, ["Segfault", "NativeHang"], corpus)
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "1", "--max-worker-restart=0",
        "--conformance-batch=case",
        "--conformance-target=numpy.*", "--conformance-target=faulty.*", f"--conformance-timeout={TIMEOUT_S}",
        f"--conformance-load-timeout={LOAD_S}", "--expectations=none", "--conformance-json=out/results.json",
        "--conformance-html=none",
    ]  # fmt: skip
    finished = subprocess.run(command, cwd=directory, env=child_environment(), capture_output=True, text=True)
    assert finished.returncode == 1, finished.stdout[-4000:] + finished.stderr[-4000:]
    records = json.loads((directory / "out" / "results.json").read_text())["results"]
    outcomes = {r["target"].split("-")[0]: (r["outcome"], r["message"]) for r in records}
    assert len(records) == len(outcomes) == 3, records
    assert outcomes["numpy.im2col"][0] == "pass" and outcomes["faulty.segfault"][0] == "crash"
    outcome, message = outcomes["faulty.hang"]
    assert outcome == "skip" and "queued again, the run ended before it ran" in message, message


def test_the_checks_reported_before_a_batch_is_queued_again_accumulate_per_batch(tmp_path: Path) -> None:
    from conformance.isolation import note_reported, reported_before

    assert reported_before(tmp_path, "cases/a.toml::b[float32]") == set()
    first = {"case": "a/b", "target": "torch.conv2d-cpu", "dtype": "float32"}
    note_reported(tmp_path, "cases/a.toml::b[float32]", [first])
    note_reported(tmp_path, "cases/a.toml::b[float32]", [{**first, "target": "jax.conv-cpu"}])  # a second death
    assert reported_before(tmp_path, "cases/a.toml::b[float32]") == {
        ("a/b", "torch.conv2d-cpu", "float32"),
        ("a/b", "jax.conv-cpu", "float32"),
    }
    assert reported_before(tmp_path, "cases/a.toml::b[float64]") == set()  # another batch's


def test_a_stop_takes_the_finished_checks_of_running_batches_only(tmp_path: Path) -> None:
    """A worker's journal holds its batch from the start until the batch ends (emptied then, as
    WorkerGuard does) or until the controller has reported it after the worker died (removed)."""
    from conformance.isolation import BATCH_JOURNAL_SUFFIX, finished_in_flight, forget_journal

    def journal(worker: str, nodeid: str, finished: list[str]) -> None:  # as WorkerGuard writes it
        planned = [{"case": "a/b", "target": t, "dtype": "float32"} for t in ("x-cpu", "y-cpu", "z-cpu")]
        lines = [json.dumps({"nodeid": nodeid, "planned": planned})]
        lines += [json.dumps({"record": {**planned[0], "target": t, "outcome": "pass"}}) for t in finished]
        (tmp_path / f"{worker}{BATCH_JOURNAL_SUFFIX}").write_text("".join(f"{line}\n" for line in lines))

    journal("gw0", "a.toml::b[batch-float32]", ["x-cpu", "y-cpu"])  # running
    (tmp_path / f"gw1{BATCH_JOURNAL_SUFFIX}").write_text("")  # its batch ended
    journal("gw2", "a.toml::d[batch-float32]", [])  # running, nothing finished yet
    journal("gw3", "a.toml::e[batch-float32]", ["x-cpu"])  # its worker died: reported by the controller
    forget_journal(tmp_path, "gw3")
    found = dict(finished_in_flight(tmp_path))
    assert {nodeid: [r["target"] for r in records] for nodeid, records in found.items()} == {
        "a.toml::b[batch-float32]": ["x-cpu", "y-cpu"],
        "a.toml::d[batch-float32]": [],
    }


def _unmappable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without shared writable mappings: `MappedFile` writes through instead."""
    import mmap

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(19, "No such device")

    monkeypatch.setattr(mmap, "mmap", refuse)


@pytest.mark.parametrize("mappable", [True, False])
def test_a_worker_journals_a_batch_only_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mappable: bool
) -> None:
    from conformance import held_memory

    if not mappable:
        _unmappable(monkeypatch)
    from conformance.isolation import Limits, WorkerGuard, finished_in_flight

    # (a guard sets this process's keeper and its children's budget: both restored afterwards)
    monkeypatch.setattr(held_memory, "_this_process", held_memory._this_process)
    monkeypatch.delenv(held_memory.RECYCLE_VARIABLE, raising=False)
    guard = WorkerGuard(tmp_path, "gw0", Limits(None, None, None, 3))
    planned = [{"case": "a/b", "target": t, "dtype": "float32", "outcome": "skip"} for t in ("x-cpu", "y-cpu")]
    guard.batch_started("a.toml::b[batch-float32]", planned)
    guard.batch_finished_check(json.dumps({**planned[0], "outcome": "pass"}))
    assert [(nodeid, [r["outcome"] for r in records]) for nodeid, records in finished_in_flight(tmp_path)] == [
        ("a.toml::b[batch-float32]", ["pass"])
    ]
    guard.batch_finished_check(json.dumps({**planned[1], "outcome": "pass"}))
    guard.batch_ended()  # its report carries both: a stop now must not take them again
    assert list(finished_in_flight(tmp_path)) == []
    # A shorter batch after a longer one (its journal written over the last one's in place).
    guard.batch_started("a.toml::c[batch-float32]", planned[:1])
    assert [(nodeid, records) for nodeid, records in finished_in_flight(tmp_path)] == [("a.toml::c[batch-float32]", [])]


@pytest.mark.parametrize("mappable", [True, False])
def test_the_state_file_reads_back_as_the_last_state_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mappable: bool
) -> None:
    """The state file (`isolation.MappedFile`) always parses as the last record noted: after a longer
    one, a far longer one, and in a replaced worker, whose first write blanks what the last one left;
    on a file system that cannot map it too."""
    from conformance import held_memory

    if not mappable:
        _unmappable(monkeypatch)
    from conformance.isolation import MAPPED_FILE_LEAST, Limits, WorkerGuard, lost_check_record

    monkeypatch.setattr(held_memory, "_this_process", held_memory._this_process)
    monkeypatch.delenv(held_memory.RECYCLE_VARIABLE, raising=False)
    limits = Limits(None, None, None, 3)
    guard = WorkerGuard(tmp_path, "gw0", limits)
    state = tmp_path / "gw0.json"
    for message in ("m" * 100, "m" * 10, "m" * (3 * MAPPED_FILE_LEAST), "", "m" * 5):
        record = {"case": "a/b", "target": "x-cpu", "dtype": "float32", "outcome": "crash", "message": message}
        guard.starting("a.toml::b[x-cpu-float32]", record)
        guard.finished()
        assert json.loads(state.read_text())["record"] == record
        lost = lost_check_record(tmp_path, "gw0", "a.toml::b[x-cpu-float32]", limits)
        assert lost.record is not None and lost.record["case"] == "a/b"
    assert state.stat().st_size == 4 * MAPPED_FILE_LEAST  # (doubled to fit the far longer one, no further)
    replaced = WorkerGuard(tmp_path, "gw0", limits)  # a fresh worker of the same id: the old state until it writes
    assert json.loads(state.read_text())["record"]["message"] == "m" * 5
    replaced.starting("a.toml::c[x-cpu-float32]", {"case": "a/c", "target": "x-cpu"})
    replaced.finished()
    assert json.loads(state.read_text())["record"] == {"case": "a/c", "target": "x-cpu"}
    assert state.stat().st_size == 4 * MAPPED_FILE_LEAST  # (what it held past the new state is blanked: it parses)


def test_a_check_that_runs_out_of_memory_costs_only_itself(tmp_path: Path) -> None:
    """One worker: an oversized check runs out of memory and leaves its process unable to allocate,
    then small checks follow. The oversized one is an error, charged to it alone; the worker retires
    and the small ones run on a fresh worker and pass."""
    corpus = {"mixed.toml": CASE.format(n=0, size=12) + "".join(CASE.format(n=n, size=6) for n in range(1, 5))}
    directory = write_project(tmp_path, ["PoisonedByOversize"], corpus)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "1", "-m", "faulty"]
    command += ["--conformance-memory-limit=1G", "--expectations=none", "--conformance-html=none"]
    command += ["--conformance-json=out/results.json", "--dist=load"]
    env = child_environment()
    finished = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=600)
    output = finished.stdout + finished.stderr
    records = json.loads((directory / "out" / "results.json").read_text())["results"]
    outcomes = {r["case"]: r["outcome"] for r in records}
    assert len(records) == len(outcomes) == 5, output[-4000:]  # every check once: none lost, none twice
    assert outcomes == {"mixed/c0": "error", **{f"mixed/c{n}": "pass" for n in range(1, 5)}}, output[-4000:]
    (oversized,) = [r for r in records if r["outcome"] == "error"]
    assert "MemoryError" in oversized["message"] and "1.00 GiB: --conformance-memory-limit" in oversized["message"]
    # (the four small cases, replicates of one geometry, are one batch)
    assert finished.returncode == 1 and "1 failed, 1 passed" in output, output[-4000:]
    assert (
        "1 worker(s) replaced after a check ran out of memory or left it held (first: mixed/c0 faulty.poisoned-cpu"
        in output
    )


def test_a_process_over_its_budget_releases_its_caches_before_it_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the budget between checks: release first; replaced if the release leaves it over the
    budget, or if it is over again within RELEASE_AT_MOST_EVERY checks; never either under it."""
    held = {"now": 1 << 30}
    released: list[int] = []

    def release() -> None:
        released.append(held["now"])
        held["now"] = held.pop("after_release", held["now"])

    monkeypatch.setattr(held_memory, "resident_and_data", lambda: (held["now"], 0))
    keeper = held_memory.Keeper(3 << 29, release_caches=release)
    assert keeper.after_check() is None and not released  # 1 GiB of 1.5: nothing to do
    held.update(now=2 << 30, after_release=1 << 30)
    assert keeper.after_check() is None and released == [2 << 30]  # the release was enough
    for _ in range(held_memory.RELEASE_AT_MOST_EVERY - 2):
        assert keeper.after_check() is None
    held.update(now=2 << 30)
    budget = "(--conformance-recycle-above 1.50 GiB)"
    assert keeper.after_check() == f"held 2.00 GiB {budget} after a check, 99 check(s) after releasing its caches"
    assert len(released) == 1  # it grew back at once: replaced, not released again
    assert (keeper.held_most, keeper.left_most, keeper.carried) == (1 << 30, 2 << 30, None)  # into a check: 1 GiB
    keeper = held_memory.Keeper(3 << 29, release_caches=release)
    held.update(now=2 << 30, after_release=(3 << 29) + 1)
    assert keeper.after_check() == f"held 2.00 GiB {budget} after a check, 1.50 GiB after releasing its caches"
    assert keeper.releases == 1
    assert held_memory.Keeper(None, release_caches=release).after_check() is None and len(released) == 2


def test_a_process_whose_data_segment_passes_half_its_limit_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Address space an allocator reserved (counted by RLIMIT_DATA, never touched, so not resident):
    over half the limit, a release first, then replacement; a later large check would fail to
    allocate (in TensorFlow's Cast, with a segmentation fault)."""
    segment = {"now": 3 << 30}
    # well within the resident budget
    monkeypatch.setattr(held_memory, "resident_and_data", lambda: (1 << 30, segment["now"]))
    keeper = held_memory.Keeper(3 << 29, data_limit=4 << 30, release_caches=lambda: None)
    assert keeper.after_check() is None  # 3 GiB of an 8 GiB limit
    segment["now"] = 5 << 30
    assert keeper.after_check() == (
        "held 5.00 GiB of data segment (half its 8.00 GiB --conformance-memory-limit) after a check, "
        "5.00 GiB after releasing its caches"
    )
    assert keeper.releases == 1 and keeper.carried is None
    assert held_memory.Keeper(3 << 29, data_limit=None, release_caches=lambda: None).after_check() is None


def test_release_frees_what_the_harness_and_frameworks_keep() -> None:
    """The real release: the harness's caches registered with it are emptied, and the process holds less."""
    import numpy

    from conformance.adapters import program

    kept = program.invoke("numpy.ones", 256 << 20, dtype=program.Name("numpy.uint8"))  # 256 MiB, touched
    program.Cached(kept).evaluate({"numpy": numpy})
    assert program.cached_values() >= 1
    before = held_memory.resident()
    held_memory.release()
    assert program.cached_values() == 0
    after = held_memory.resident()
    assert before is not None and after is not None and before - after > 200 << 20, (before, after)


def _run_holding(
    directory: Path, adapters: list[str], cases: int, budget: str, **environment: str
) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]]]:
    """`cases` cases through `adapters` (tests/fault_adapters.py) with that budget: every check
    ran once and passed; the output, the results, and what each worker used."""
    corpus = {"held.toml": "".join(CASE.format(n=n, size=6) for n in range(cases))}
    write_project(directory, adapters, corpus)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "-m", "paced"]
    command += [f"--conformance-recycle-above={budget}", "--expectations=none", "--conformance-html=none"]
    command += ["--conformance-json=out/results.json"]
    env = child_environment(**environment)
    run = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    document = json.loads((directory / "out" / "results.json").read_text())
    checks = Counter((r["case"], r["target"]) for r in document["results"])
    assert len(checks) == cases * len(adapters) and set(checks.values()) == {1}, checks  # none lost, none twice
    assert {r["outcome"] for r in document["results"]} == {"pass"}
    workers = {k: v for k, v in document["environment"]["processes"].items() if k != "controller"}
    return output, document, workers


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to read a process's resident size")
def test_a_process_whose_caches_a_release_frees_lives_on(tmp_path: Path) -> None:
    """Checks that keep 32 MiB each in a cache the harness can release (Hoarder, as frameworks keep a
    compiled program per shape): a worker over its budget releases it, and is not replaced (from a
    worker's 0.09 GiB, a 500 MiB budget takes 13 checks to fill: of 32, one worker runs 16 or more)."""
    output, _, workers = _run_holding(tmp_path, ["Hoarder"], 32, "500M", CONFORMANCE_TEST_HOARD_MB="32")
    assert sum(usage["releases"] for usage in workers.values()) >= 1, workers
    assert not any("retired" in usage for usage in workers.values()), workers
    assert "replaced" not in output, output[-3000:]
    for usage in workers.values():  # never into a check over the budget
        assert usage["held_most_bytes"] <= 500 << 20, usage
    assert max(usage["left_most_bytes"] for usage in workers.values()) > 500 << 20, workers


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to read a process's resident size")
def test_workers_and_children_that_leak_are_replaced_and_no_check_is_lost(tmp_path: Path) -> None:
    """Checks that keep 64 MiB each (160 in the framework child) where no release reaches (Leaker):
    the worker, and the child, is replaced between checks. Every check still runs once and passes,
    and the results say who held how much and how often a process was replaced."""
    output, _, workers = _run_holding(tmp_path, ["Leaker", "LeakerInChild"], 24, "400M")
    retired = [usage["retired"] for usage in workers.values() if "retired" in usage]
    assert retired and all("(--conformance-recycle-above 400 MiB) after a check" in r for r in retired)
    assert "worker(s) replaced after a check ran out of memory or left it held" in output, output[-3000:]
    (child_kind,) = {kind for usage in workers.values() for kind in usage["children"]}
    tallies = [usage["children"][child_kind] for usage in workers.values() if child_kind in usage["children"]]
    assert sum(t["recycled"] for t in tallies) >= 1 and sum(t["started"] for t in tallies) > len(tallies)
    assert all("after releasing its caches" in t["first_recycled"] for t in tallies if t["recycled"])
    # No process carries more than the budget into a check; a check leaves one over it by one keep at most.
    for usage in [*workers.values(), *tallies]:
        assert usage["held_most_bytes"] <= 400 << 20, usage
        assert usage["left_most_bytes"] <= (400 << 20) + (160 << 20) + (32 << 20), usage
    replaced = [u for u in workers.values() if "retired" in u] + [t for t in tallies if t["recycled"]]
    assert all(usage["left_most_bytes"] > 400 << 20 for usage in replaced), replaced


def _processes_tagged(tag: str) -> list[int]:
    """The pids whose environment carries `tag`: every process a run started, orphaned or not."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if tag.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # (ended meanwhile, or not ours)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find a run's processes")
@pytest.mark.parametrize(
    ("stop", "batch"),
    [(signal.SIGTERM, "off"), (signal.SIGINT, "off"), (signal.SIGKILL, "off"), (signal.SIGTERM, "case")],
    ids=["SIGTERM", "SIGINT", "SIGKILL", "SIGTERM-batches"],
)
def test_a_stopped_run_stops(tmp_path: Path, stop: signal.Signals, batch: str) -> None:
    """SIGTERM (what CI systems and `timeout` send) or SIGINT to the pytest process alone, mid-run: its
    workers and their framework children end within seconds, and the results streamed so far are
    written, marked interrupted, with the signal. SIGKILL leaves no process either (each dies with
    its parent), and the stream readable. Batches that were running report the checks they had
    finished (from their journals: none of them had reported)."""
    corpus = {"slow.toml": "".join(CASE.format(n=n, size=6) for n in range(40))}
    directory = write_project(tmp_path, ["Leisurely", "LingeringInChild", "GilHog"], corpus)
    tag = f"CONFORMANCE_TEST_RUN_TAG={uuid.uuid4().hex}"
    # Checks of half a second in the workers, of a minute in their framework children, and native
    # calls of a minute that hold a worker's GIL: when the signal comes, each worker is busy in one.
    env = child_environment(
        CONFORMANCE_TEST_RUN_TAG=tag.split("=")[1], CONFORMANCE_TEST_LINGER_S="60", CONFORMANCE_TEST_GIL_HOG="32"
    )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "-m", "paced"]
    command += ["--expectations=none", "--conformance-json=out/results.json", "--conformance-html=out/index.html"]
    command += [f"--conformance-batch={batch}"]
    run = subprocess.Popen(command, cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stream = directory / "out" / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a few checks done, both kinds of process running
        done = stream.read_text().count('"kind": "result"') if stream.exists() else 0
        # (a batch reports when it ends: a minute away, each in its child's call after its quick check)
        if (done >= 2 or batch == "case") and len(_processes_tagged(tag)) >= 5:  # controller, 2 workers, 2 children
            time.sleep(1)  # (both workers into their children's calls)
            break
        time.sleep(0.2)
    else:
        run.kill()
        pytest.fail(f"the run never got going: {run.communicate()[0][-3000:]}")
    run.send_signal(stop)
    stopped_at = time.monotonic()
    output, _ = run.communicate(timeout=120)
    while _processes_tagged(tag) and time.monotonic() - stopped_at < 30:
        time.sleep(0.2)
    left = _processes_tagged(tag)
    assert not left, f"still running {time.monotonic() - stopped_at:.0f} s after {stop.name}: {left}"
    assert time.monotonic() - stopped_at < 15, output[-3000:]
    if stop == signal.SIGKILL:  # nothing could be written at the end; the stream is what a kill leaves
        assert len(read_stream(stream)["results"]) >= 2
        return
    assert run.returncode == 2, output[-3000:]  # pytest's "interrupted"
    document = json.loads((directory / "out" / "results.json").read_text())
    finished = document["interrupted"]["results"]
    assert document["interrupted"]["signal"] == stop.name and 2 <= finished < 80, document["interrupted"]
    if batch == "case":  # each worker's quick check of the batch it was in, from the batch's journal
        assert {r["target"] for r in document["results"]} == {"paced.leisurely-cpu"}, document["results"]
    assert len(document["results"]) == finished and {r["outcome"] for r in document["results"]} == {"pass"}
    assert f"stopped by {stop.name}: the {finished} check(s) finished before it" in output, output[-3000:]
    (drawn,) = embedded_data((directory / "out" / "index.html").read_text())["runs"]
    assert drawn["interrupted"]["signal"] == stop.name  # the report's banner says so


TOGETHER_CASES = 30  # enough that work is still pending when both workers die


def test_two_workers_that_die_together_cost_only_their_own_checks(tmp_path: Path) -> None:
    """Two workers die at the same moment, again and again (every check of the target kills its
    worker together with the other's): the run finishes, and every check is reported."""
    rendezvous = tmp_path / "rendezvous"
    rendezvous.mkdir()
    (tmp_path / "project").mkdir()
    corpus = {"together.toml": "".join(CASE.format(n=n, size=6 + n % 4) for n in range(TOGETHER_CASES))}
    directory = write_project(tmp_path / "project", ["DieTogether"], corpus)
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "-k", "numpy or faulty"]
    command += ["--conformance-crash-limit=2", "--expectations=none", "--conformance-html=none"]
    command += ["--conformance-json=out/results.json", "--conformance-timeout=120"]
    env = child_environment(CONFORMANCE_TEST_RENDEZVOUS=str(rendezvous))
    finished = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=600)
    output = finished.stdout + finished.stderr
    assert "INTERNALERROR" not in output, output[-4000:]
    assert finished.returncode == 1, output[-4000:]  # failures (the crashes), not an internal error (3)
    assert len(list(rendezvous.iterdir())) >= 2, "two workers met"
    records = json.loads((directory / "out" / "results.json").read_text())["results"]
    numpy_records = [r for r in records if r["framework"] == "numpy"]
    assert len(numpy_records) == TOGETHER_CASES and {r["outcome"] for r in numpy_records} == {"pass"}
    dying = Counter(r["outcome"] for r in records if r["framework"] == "faulty")
    assert sum(dying.values()) == TOGETHER_CASES and dying["crash"] >= 2, dying


class _Worker:
    """What xdist's scheduler asks of a worker (execnet's WorkerController): a dead one's pipe
    refuses every send, as execnet's does."""

    def __init__(self, name: str, dead: bool = False) -> None:
        self.name, self.dead, self.shutting_down, self.received = name, dead, False, []
        self.gateway = SimpleNamespace(id=name)

    def sendcommand(self, name: str, **kwargs: object) -> None:
        if self.dead:
            raise OSError("cannot send (already closed?)")
        self.received.append(name)

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sendcommand("runtests", indices=indices)

    def send_runtest_all(self) -> None:
        self.sendcommand("runtests_all")

    def shutdown(self) -> None:
        self.sendcommand("shutdown")

    def log(self, *message: object) -> None:
        pass


def test_xdist_s_rescheduling_onto_a_worker_that_died_too_loses_nothing() -> None:
    """xdist's own LoadScheduling, two workers: the first dies and its checks go to the second,
    which died at the same moment (its death not yet reported). The send fails; the plugin lets it
    go, the checks stay on the second worker's list, and its own death hands them on."""
    from xdist.scheduler.load import LoadScheduling

    from conformance.plugin.controller import tolerate_a_dead_worker

    values = {"tx": ["2*popen"], "maxschedchunk": 1}  # -n 2, one check sent at a time
    config = SimpleNamespace(getvalue=values.get, getoption=values.get)
    scheduler = LoadScheduling(config)  # type: ignore[arg-type]
    first, second, third = _Worker("gw0"), _Worker("gw1"), _Worker("gw2")
    items = [f"cases/x.toml::c{n}" for n in range(40)]
    for worker in (first, second):
        tolerate_a_dead_worker(worker)
        scheduler.add_node(worker)  # type: ignore[arg-type]
        scheduler.add_node_collection(worker, items)  # type: ignore[arg-type]
    scheduler.schedule()
    first.dead = second.dead = True
    crashed = scheduler.remove_node(first)  # type: ignore[arg-type]  # (unguarded: OSError, INTERNALERROR)
    assert crashed == items[0]
    pending_on_second = list(scheduler.node2pending[second])  # type: ignore[index]
    tolerate_a_dead_worker(third)
    scheduler.add_node(third)  # type: ignore[arg-type]  # the replacement worker
    scheduler.add_node_collection(third, items)  # type: ignore[arg-type]
    assert scheduler.remove_node(second) == items[pending_on_second[0]]  # type: ignore[arg-type]
    handed_on = set(scheduler.pending) | set(scheduler.node2pending[third])  # type: ignore[index]
    assert set(pending_on_second[1:]) <= handed_on, "what the second worker never received is run elsewhere"


def test_the_end_s_pass_runs_without_the_collector_and_leaves_it_as_it_was() -> None:
    """The controller's pass over a run's records makes no reference cycles: the collector is off for
    it (`lifetime.collecting_nothing`), back on after it, even if the pass raised, and left off where it was off."""
    assert gc.isenabled()
    with pytest.raises(ValueError), lifetime.collecting_nothing():
        assert not gc.isenabled()
        raise ValueError("the pass failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with lifetime.collecting_nothing():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_run_s_processes_end_without_collecting_their_heaps(tmp_path: Path) -> None:
    """The controller freezes its heap at exit (conformance/lifetime.py), so that Python's
    finalization does not collect it once more: the handler the project's conftest registers before
    the plugin configures runs after the plugin's and sees what it froze. A worker freezes its heap
    after its last check (pytest's end collects it several times) and exits without finalizing:
    that handler never runs there, and its unconfigure already sees the heap frozen."""
    directory = write_project(tmp_path, ["Slow"], {"one.toml": CASE.format(n=1, size=6)})
    seen = tmp_path / "frozen.txt"
    with (directory / "conftest.py").open("a") as conftest:
        conftest.write(
            "\nimport atexit, gc, os\n"
            "def _note(when: str) -> None:\n"
            f"    with open({str(seen)!r}, 'a') as out:\n"
            "        who = os.environ.get('PYTEST_XDIST_WORKER', 'controller')\n"
            "        out.write(f'{when} {who} {gc.get_freeze_count()}\\n')\n"
            "atexit.register(_note, 'exit')\n"
            "def pytest_unconfigure(config) -> None:\n"
            "    _note('unconfigure')\n"
        )
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "1", "-m", "paced"]
    command += ["--expectations=none", "--conformance-json=out/results.json", "--conformance-html=none"]
    done = subprocess.run(command, cwd=directory, env=child_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    frozen = {(when, who): int(count) for when, who, count in (line.split() for line in seen.read_text().splitlines())}
    assert set(frozen) == {("unconfigure", "controller"), ("exit", "controller"), ("unconfigure", "gw0")}, frozen
    assert frozen["exit", "controller"] > 10_000 and frozen["unconfigure", "gw0"] > 10_000, frozen


def test_a_worker_collects_its_young_generation_less_often(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that runs checks (its guard made) collects its young generation every
    `YOUNG_COLLECTION_EVERY` allocations instead of Python's 700; the older thresholds stay."""
    from conformance import held_memory
    from conformance.isolation import Limits, WorkerGuard

    monkeypatch.setattr(held_memory, "_this_process", held_memory._this_process)
    monkeypatch.delenv(held_memory.RECYCLE_VARIABLE, raising=False)
    was = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        WorkerGuard(tmp_path, "gw0", Limits(None, None, None, 3))
        assert gc.get_threshold() == (held_memory.YOUNG_COLLECTION_EVERY, 10, 10)
    finally:
        gc.set_threshold(*was)


def test_a_worker_freezes_what_a_target_s_first_load_leaves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a target has loaded in a worker (`WorkerGuard.loaded`), what the worker holds is frozen
    (held_memory.keep_for_good): once per target, not at every check."""
    from conformance import held_memory
    from conformance.isolation import Limits, WorkerGuard

    monkeypatch.setattr(held_memory, "_this_process", held_memory._this_process)
    monkeypatch.delenv(held_memory.RECYCLE_VARIABLE, raising=False)
    guard = WorkerGuard(tmp_path, "gw0", Limits(None, None, None, 3))
    record = {"case": "a/b", "target": "x-cpu", "dtype": "float32", "outcome": "crash"}
    gc.unfreeze()
    try:
        frozen = []
        for _ in range(2):
            guard.starting("a.toml::b[x-cpu-float32]", record)
            guard.loaded()
            guard.finished()
            frozen.append(gc.get_freeze_count())
            gc.unfreeze()
        assert frozen[0] > 1000 and frozen[1] == 0, frozen
    finally:
        gc.unfreeze()
