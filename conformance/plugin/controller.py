"""The controller: lives on the xdist controller only (or in the single process without xdist).

It hands each worker the run's state directory, turns a worker's death into that check's `crash`
or `timeout` record (and a batch's finished checks from its journal, queueing the batch again for
the checks it did not reach), or, for a worker that retired short of memory, puts the check it had
not started back in the queue; it writes every record to the stream as its report arrives (before
the terminal says the check finished), and at the end writes
the results JSON, the report and the summary, also when a signal stopped the run
(conformance/lifetime.py). It holds no records (but for the unreached checks of a batch queued again,
until it runs): the stream is the store, sorted on disk at the end and read back one record at a
time (conformance/record_files.py).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from conformance import check_records, contracts, expectations, history, isolation, lifetime, report, results, runner
from conformance.cases import case_files
from conformance.compare import Outcome
from conformance.overview import Overview
from conformance.plugin import CASE_ERROR_KEY, CHECK_KEY, RECORD_KEY, REQUEUED
from conformance.plugin.collection import case_named, load_case_file, tiers_left_out
from conformance.plugin.options import corpus_roots, settings
from conformance.plugin.run_state import CONTROLLER_PID_INPUT, RETIRE_INPUT, STATE_DIR_INPUT, run_state
from conformance.plugin.selection import targets
from conformance.plugin.terminal import failure_text, report_deselected, terminal_safe, write_summary
from conformance.plugin.usage import process_usage
from conformance.record_files import from_wire, to_wire, wire_record
from conformance.record_passes import Fold
from conformance.records import Record
from conformance.results import ResultsWriter, atomic_write_text, read_stream, result_key
from conformance.run_environment import base_environment

ENV_KEY = "conformance_environment"  # workeroutput keys
USAGE_KEY = "conformance_usage"
DESELECTED_KEY = "conformance_deselected"
# xdist's schedulers that can put a check back in the queue (`mark_test_pending`): a worker out of
# memory retires only under these.
REQUEUEING_SCHEDULERS = ("load", "worksteal")
T = TypeVar("T")


def corpus(config: pytest.Config) -> expectations.Corpus:
    """Every check of the corpus, selected or not: what 'stale' is judged against.

    The corpus is what this run was given plus the directory the expectations file sits in (cases/),
    so running one case file does not make the entries for the others look stale.
    """
    searched = list(corpus_roots(config))
    expectations_path = settings(config).expectations_path
    if expectations_path is not None and expectations_path.parent.is_dir():
        searched.append(expectations_path.parent)
    case_dtypes = {
        case.qualified_id: tuple(case.dtypes)
        for path, root in dict(case_files(searched)).items()
        for case in load_case_file(path, root).cases
    }
    return expectations.Corpus(case_dtypes, tuple(t.id for t in targets(config)))


class _Later(Generic[T]):
    """A value made in a thread of its own while the run goes on (or made when asked, `now` being
    true); `result` waits for it, and raises what making it raised."""

    def __init__(self, make: Callable[[], T], now: bool = False) -> None:
        self._make = make
        self._value: list[T] = []  # (empty until made: T itself may be None)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if not now:
            self._thread = threading.Thread(target=self._run, name="conformance-corpus", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._value.append(self._make())
        except BaseException as exc:  # (raised in the thread that asks for it)
            self._error = exc

    def result(self) -> T:
        if self._thread is None:
            return self._make()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value[0]


def tolerate_a_dead_worker(node: Any) -> None:
    """A send to a worker that has died is let go. When a worker dies, xdist gives its pending checks
    to the others (LoadScheduling.remove_node); one that died at the same moment, whose death xdist
    has not heard of yet, cannot take them, and the failed send would end the whole run with an
    INTERNALERROR. The checks stay on that worker's list, so its own death, reported next, hands
    them on again: nothing is lost. (xdist sends only to its workers; execnet raises OSError only
    when the pipe to the worker is closed.)"""
    send = node.sendcommand

    def sendcommand(name: str, **kwargs: object) -> None:
        try:
            send(name, **kwargs)
        except OSError as exc:
            node.log(f"not sent to a dead worker: {name} ({exc})")

    node.sendcommand = sendcommand


def share_the_collection(config: pytest.Config, node: Any) -> None:
    """xdist's load schedulers keep each worker's collected ids for the rest of the run
    (`node2collection`, never emptied when a worker goes): 157,000 ids of the extended tier, about
    23 MB, for every worker ever replaced. A worker that is gone points at the shared list instead:
    what the schedulers read of it (how many workers have collected; what a new one is compared
    with) is unchanged."""
    scheduler = getattr(config.pluginmanager.get_plugin("dsession"), "sched", None)
    collections = getattr(scheduler, "node2collection", None)
    shared = getattr(scheduler, "collection", None)
    if isinstance(collections, dict) and node in collections and shared is not None:
        collections[node] = shared


class FrameworksThatRan:
    """The frameworks a run's records come from (a pass's fold: conformance/record_passes.py)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def add(self, record: Mapping[str, Any]) -> None:
        self.names.add(record["framework"])

    def merge(self, later: FrameworksThatRan) -> None:
        self.names |= later.names


class ResultCollector:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        options = settings(config)
        self.writer = ResultsWriter(options.json_path, ["pytest", *sys.argv[1:]])
        self.html_path = options.html_path
        self.history_path = options.history_path
        self.history_note: str | None = None  # what became of --conformance-history, for the summary
        self.known = run_state(config).known
        self.state_dir = run_state(config).state_dir
        self.limits = options.limits
        self.frameworks: dict[str, Any] = {}
        self.lost_checks: dict[str, dict[str, Any]] = {}  # target -> crash/timeout tally
        self.processes: dict[str, dict[str, Any]] = {}  # worker id -> process_usage()
        self.document: dict[str, Any] | None = None
        self.glance: Overview | None = None  # the terminal summary's tables, made in the pass that writes the results
        self.recovered_report: Path | None = None
        self.deselected_reported = False
        self.stopped_by: str | None = None  # the signal that stopped the run
        self.written_early = False  # the results were written before xdist ended its workers
        self.failed_early: Exception | None = None
        if threading.current_thread() is threading.main_thread():  # (signal handlers live there only)
            # The controller's children are its workers (it starts no framework process of its own).
            config.add_cleanup(lifetime.stop_on_signals(lambda: lifetime.children_of(os.getpid()), self._stopped))
        self.retiring: dict[str, dict[str, Any]] = {}  # worker id -> why it retired, until its check is requeued
        self.retired: list[str] = []  # the checks after which a worker retired, out of memory
        # A batch queued again after its worker died -> its checks not reached yet, as not run: reported
        # so if the batch never reports again (the run stops first, or it dies before its first check).
        self.queued_again: dict[str, list[Record]] = {}
        # The corpus (every case file read again, the large tier's sweeps expanded: seconds) is only
        # needed at the end; a controller of xdist workers, which runs no check, reads it meanwhile.
        self.corpus = _Later(lambda: corpus(config), now=not options.workers)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[STATE_DIR_INPUT] = str(self.state_dir)
        node.workerinput[RETIRE_INPUT] = self.config.getoption("dist", "no") in REQUEUEING_SCHEDULERS
        node.workerinput[CONTROLLER_PID_INPUT] = os.getpid()
        tolerate_a_dead_worker(node)

    def _stopped(self, signal_name: str) -> None:
        self.stopped_by = signal_name

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        """A worker died running `crashitem`: report it as a crash or timeout record of its own."""
        worker = report.node.gateway.id
        if self.retiring.pop(worker, None) is not None:  # it ended itself before starting this check
            self._requeue_after_retirement(worker, crashitem, report)
            sched.mark_test_pending(crashitem)
            report.outcome = REQUEUED  # type: ignore[assignment]
            return
        lost = isolation.lost_check_record(self.state_dir, worker, crashitem, self.limits)
        record, message = lost.record, lost.message
        deferred = self.queued_again.pop(crashitem, [])  # (a batch queued again: what it had still to run)
        finished, not_reached, between_checks = isolation.batch_remainder(
            self.state_dir, worker, crashitem, record, lost.answered
        )
        isolation.forget_journal(self.state_dir, worker)  # (reported here: a stop must not take it again)
        for other in not_reached:  # (the finished ones had theirs applied in the worker)
            expectations.apply(other, self.known.entries)
        if record is None:  # it died outside a framework call (e.g. collecting): say what is known
            # A batch it had started: its checks are reported (not queued again: no check is charged
            # with this death, so nothing would bound how often the batch could die again).
            report.longrepr = f"{report.longrepr}\n{message}"
            for other in deferred:  # (queued again, it died again before its first check)
                other["message"] += "; queued again, its next worker died before starting it"
            # (a batch queued again plans only what it had left: its journal, if any, holds `deferred`)
            reported = [*finished, *not_reached] if finished or not_reached else deferred
            report.user_properties.append((RECORD_KEY, to_wire(wire_record(other) for other in reported)))
            return
        if between_checks:  # the check it names had finished: none is charged with the death
            after = self._report_the_rest(crashitem, report, sched, [], finished, not_reached)
            check = f"{record['target']} {record['dtype']}"
            when = f"judging {check}'s answers" if lost.answered else f"after {check} had finished"
            report.longrepr = (
                f"{report.longrepr}\n{message}\n\nits worker died between two checks of its batch, {when}: "
                f"no check is charged with it; {len(finished)} check(s) finished, {len(not_reached)} {after}"
            )
            return
        tally = self.lost_checks.setdefault(record["target"], {"count": 0, "first": record["case"], "stopped": False})
        tally["count"] += 1
        # A death while loading stops the target at once: every later check would load it the same way.
        tally["stopped"] = tally["stopped"] or lost.while_loading or tally["count"] >= self.limits.crash_limit
        atomic_write_text(self.state_dir / isolation.BROKEN_TARGETS_FILE, json.dumps(self.lost_checks))
        expectations.apply(record, self.known.entries)
        if check_records.wants_reproduction(record):  # (a large-tier check's worker made none before its call)
            self._add_reproduction(record)
        report.user_properties.append((RECORD_KEY, to_wire([wire_record(record)])))
        # The checks the batch did not reach run again on a worker (after the tally above is on disk).
        after = self._report_the_rest(crashitem, report, sched, [record], finished, not_reached)
        report.longrepr = terminal_safe(failure_text(record))
        report.user_properties.append((CHECK_KEY, True))  # (its detail is the summary's: plugin's terminal_summary)
        if finished or not_reached:
            report.longrepr += (
                f"\n\nthe rest of its batch: {len(finished)} check(s) finished, {len(not_reached)} {after}"
            )
        if record["outcome"] == Outcome.XFAIL:
            report.outcome = "skipped"
            report.wasxfail = f"known divergence {record['expectation']['id']}"

    def _add_reproduction(self, record: Record) -> None:
        case = case_named(self.config, record["case_file"], record["case"])
        target = next((t for t in targets(self.config) if t.id == record["target"]), None)
        if case is not None and target is not None:
            runner.with_reproduction(record, case, target, record["dtype"])

    def _requeue_after_retirement(self, worker: str, crashitem: str, report: pytest.TestReport) -> None:
        """A worker that retired between two checks of a batch: the checks it finished go with this
        report, and the batch, queued again, runs only the others (each retirement follows a finished
        check, so the batch gets through). Nothing, if it retired before the item began."""
        finished, not_reached, _ = isolation.batch_remainder(self.state_dir, worker, crashitem, None)
        isolation.forget_journal(self.state_dir, worker)
        if not finished:
            return
        isolation.note_reported(self.state_dir, crashitem, finished)
        for other in not_reached:  # (reported so only if the run ends before the batch runs again)
            other["message"] = "not run: its batch's worker retired (memory) before reaching it"
            expectations.apply(other, self.known.entries)
        self.queued_again[crashitem] = not_reached
        report.user_properties.append((RECORD_KEY, to_wire(wire_record(record) for record in finished)))

    def _report_the_rest(
        self,
        crashitem: str,
        report: pytest.TestReport,
        sched: Any,
        lost: list[Record],
        finished: list[Record],
        not_reached: list[Record],
    ) -> str:
        """A dead batch's finished checks go with its crash report; those it did not reach are queued
        again where the scheduler can (said: "queued again"), else reported as not run."""
        queued_again = bool(not_reached) and self.config.getoption("dist", "no") in REQUEUEING_SCHEDULERS
        if queued_again:
            isolation.note_reported(self.state_dir, crashitem, [*lost, *finished])
            self.queued_again[crashitem] = not_reached
            sched.mark_test_pending(crashitem)
        reported = finished if queued_again else [*finished, *not_reached]
        report.user_properties.append((RECORD_KEY, to_wire(wire_record(other) for other in reported)))
        return "queued again" if queued_again else "not run"

    @pytest.hookimpl(tryfirst=True)  # on disk before the terminal says it finished
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when not in ("call", "???"):  # "???": xdist's report for an item whose worker died
            return
        if report.when == "call":
            self.queued_again.pop(report.nodeid, None)  # (a batch queued again reported its checks itself)
        arrived = [record for key, value in report.user_properties if key == RECORD_KEY for record in from_wire(value)]
        for number, (record_key, text) in enumerate(arrived, start=1):
            self.writer.add_text(record_key, text, flush=number == len(arrived))
        for key, value in report.user_properties:
            if key == CASE_ERROR_KEY:
                assert isinstance(value, dict), f"not a case error: {value!r}"
                self.writer.add_case_error(value)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        share_the_collection(self.config, node)
        output = getattr(node, "workeroutput", {})
        retired = isolation.retirement(self.state_dir, node.gateway.id)
        if retired is not None:
            self.retiring[node.gateway.id] = retired
            self.retired.append(retired["after"])
            output = {USAGE_KEY: json.dumps({**retired["usage"], "retired": retired["after"]})}
        if output.get(ENV_KEY):
            for name, info in json.loads(output[ENV_KEY]).items():
                self.frameworks.setdefault(name, info)
        if output.get(USAGE_KEY):  # (a crashed worker sends none; its replacement gets an id of its own)
            self.processes[node.gateway.id] = json.loads(output[USAGE_KEY])
        if DESELECTED_KEY in output and not self.deselected_reported:  # every worker collected the same
            self.deselected_reported = True
            report_deselected(self.config, int(output[DESELECTED_KEY]), before_collection_report=False)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """The results and the report. A run that ended normally (every worker finished and said so)
        has them written before xdist waits for its workers' processes to exit (seconds: each
        unloads its frameworks), which the results do not need; a run that was stopped, after it has
        ended them (`pytest_sessionfinish_after_the_workers`), so that their batches' journals are read whole."""
        self.written_early = self.stopped_by is None and session.exitstatus != pytest.ExitCode.INTERRUPTED
        if self.written_early:
            try:
                self._write_everything(session)
            except Exception as exc:  # (raised once xdist has ended its workers)
                self.failed_early = exc

    # (a second implementation of the hook: pytest takes a method as one only if its name says pytest_)
    @pytest.hookimpl(trylast=True, specname="pytest_sessionfinish")
    def pytest_sessionfinish_after_the_workers(self, session: pytest.Session) -> None:
        if self.failed_early is not None:
            raise self.failed_early
        if not self.written_early:
            self._write_everything(session)

    def _write_everything(self, session: pytest.Session) -> None:
        if self.stopped_by is not None:  # the workers were killed: what their running batches had finished
            self._write_batches_in_flight()
        for left in self.queued_again.values():  # batches the run stopped before they ran again
            for record in left:
                record["message"] += "; queued again, the run ended before it ran"
                self.writer.add(record)
        self.queued_again.clear()
        if not self.writer.count and not self.writer.case_errors:
            return  # a run of the harness's own tests only: leave the last results alone
        try:
            with lifetime.collecting_nothing():
                self._write_results(session)
        finally:
            self.writer.close()  # (its spill directory: the sorted store and the report's rows lived there)
        if self.writer.preserved is not None and self.html_path is not None:
            # The killed run's finished results, drawn beside this run's report.
            self.recovered_report = self.html_path.with_name(f"{self.writer.preserved.stem}.html")
            report.write_report(read_stream(self.writer.preserved), self.recovered_report)

    def _write_batches_in_flight(self) -> None:
        for nodeid, finished in isolation.finished_in_flight(self.state_dir):
            for record in finished:  # (known divergences were applied in the worker)
                self.writer.add(record)
            if nodeid in self.queued_again:  # running again after a death: the rest stay not run
                done = {result_key(r) for r in finished}
                self.queued_again[nodeid] = [r for r in self.queued_again[nodeid] if result_key(r) not in done]

    def _write_results(self, session: pytest.Session) -> None:
        # One pass over the sorted records makes everything below: the stream is the store, and the
        # records are read back once, one at a time.
        state = run_state(session.config)
        ran = FrameworksThatRan()
        known = expectations.StatusTally(self.known.entries, self.corpus.result())
        kept = contracts.Tally(c.summary() for c in state.contracts.entries)
        failing = history.FailingChecks()
        folds: list[Fold] = [known, kept, ran, *([failing] if self.history_path is not None else [])]
        page = report.ReportData(self.writer.count, self.writer.spill_directory) if self.html_path else None
        if page is not None:  # (the report's page tallies the same overview and counts)
            folds.append(page)
            self.glance, counts = page.overview, page.summary
        else:
            self.glance, counts = Overview(), results.Summary()
            folds += [self.glance, counts]
        # A controller of workers ends in parts, one per core (its workers are done). A process that
        # ran checks itself holds the frameworks' threads, whose locks a forked part could meet: one part.
        records = self.writer.sorted_records(folds, parts=None if self.processes else 1)
        environment = base_environment()
        self.frameworks.update({k: v for k, v in runner.loaded_environments().items() if k not in self.frameworks})
        # Only frameworks that produced results: harness tests in the same process run fake adapters.
        # Keys are frameworks, or targets that run with settings of their own ("tensorflow.conv2d@onednn-on").
        environment["frameworks"] = {k: v for k, v in sorted(self.frameworks.items()) if k.split(".")[0] in ran.names}
        # Without xdist this process ran the checks; with it, the controller only gathered results.
        own = "controller" if self.processes else "main"
        environment["processes"] = {**self.processes, own: process_usage(session.config)}
        environment["thread_limits"] = state.thread_limits
        command = ["pytest", *sys.argv[1:]]
        interrupted = None
        if session.exitstatus == pytest.ExitCode.INTERRUPTED:  # what had finished when it stopped
            interrupted = {"stream": self.writer.stream_path.name, "results": self.writer.count, "torn_lines": 0}
            interrupted["signal"] = self.stopped_by or "KeyboardInterrupt"
        # The report is written while the results JSON is (which waits on the kernel), unless the
        # report shows the history, which reads that JSON first.
        alongside = None
        if page is not None and self.html_path is not None and self.history_path is None:
            alongside = functools.partial(page.write, path=self.html_path)
        self.document = self.writer.finish(
            environment, command, known.statuses(), kept.result(), records, counts.as_dict(), keep_spill=True,
            interrupted=interrupted, alongside=alongside,
        )  # fmt: skip
        records.discard()
        if self.history_path is not None:
            self._add_to_history(self.history_path, failing.keys)
        if page is not None and self.html_path is not None and alongside is None:
            page.write(self.document, self.html_path)

    def _add_to_history(self, path: Path, failing: list[history.Key]) -> None:
        """This run into the history, and the history of its failing checks into its report. A
        history that cannot take it (another schema, not SQLite) costs the report that section only."""
        assert self.document is not None
        try:
            with history.History(path) as store:
                store.add_file(self.writer.json_path)
                self.document["history"] = history.report_section(store, path, failing)
                self.history_note = f"added to the history {path} ({len(store.runs())} run(s))"
        except history.HistoryError as exc:
            self.history_note = f"not added to a history: {exc}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.history_note is not None:
            terminalreporter.write_line(terminal_safe(f"conformance: {self.history_note}"))
        if self.document is not None and self.glance is not None:
            write_summary(
                terminalreporter, self.document, self.glance, self.lost_checks, self.writer.preserved,
                self.recovered_report, self.writer.json_path, self.html_path, tuple(self.retired),
            )  # fmt: skip
            return
        left_out = tiers_left_out(self.config)  # (nothing ran: the header's notice may have scrolled by, or -q hid it)
        if left_out:
            terminalreporter.write_line(terminal_safe(f"conformance: {left_out}"), yellow=True)
