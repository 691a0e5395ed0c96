"""pytest plugin: one test item per case x target x dtype, results collected xdist-safely.

Installed, it loads in every pytest run (the `pytest11` entry point) and is inert unless asked for:
`--cases` given, or a rootdir whose cases/ holds the suite's kind of TOML ([[case]], [[sweep]],
[[divergence]] or [[stack]] tables). Inert, it has added its options and
nothing else: no markers, no items, no results, no change to pytest's own settings or output.

This module holds only the hooks; each job has a module of its own:

- `options`     the command-line options, read once into typed `Settings`
- `selection`   targets (built-in and from `pytest_conformance_adapters`), tiers, markers, `-m` while collecting
- `run_state`   what a run shares across processes: state directory, known divergences, workers' environment
- `collection`  case files and composites.toml -> items
- `sharding`    which cases `--conformance-shard K/N` takes (by hash, or balanced by measured durations)
- `scheduling`  which worker gets an item: the harness's tests spread among the checks, work stealing
- `items`       the item kinds, and the guard every framework call runs under
- `controller`  the controller's collector: streamed records, crash records, results JSON, report
- `terminal`    failure text, the run's one-screen summary, the count of checks `-m` ruled out
- `framework_warnings`  a framework's warnings during a check, into its record (shown once per target)
- `usage`       what each process that ran checks used

Only `options` (for pytest's option parser) loads with the plugin; everything else, NumPy and the
harness included, is imported once a run has asked for the suite, so installing it costs other
projects' pytest runs nothing but the options.

Workers run items and attach each result record to its report (`user_properties`, builtin types
only); the controller, and only the controller, streams those records to disk and writes the
final JSON. Framework details travel from the workers through `config.workeroutput`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from conformance import hookspecs
from conformance.plugin import options


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


# The user_properties keys a report carries its records and invalid cases under (items.py).
RECORD_KEY = "conformance"
CASE_ERROR_KEY = "conformance_case_error"
CHECK_KEY = "conformance_check"  # on a failing check's report: its detail is the suite's summary's
REQUEUED = "requeued"  # the outcome of xdist's report on a check a retired worker did not start

_active_key = pytest.StashKey[bool]()


def active(config: pytest.Config) -> bool:
    """Whether this run asked for the suite: `--cases`, or a corpus in the rootdir's cases/."""
    if _active_key not in config.stash:
        config.stash[_active_key] = bool(config.getoption("cases")) or _holds_a_corpus(Path(config.rootpath, "cases"))
    return config.stash[_active_key]


# The suite's kinds of TOML file: case files, known divergences, composites. A cases/ folder of
# other TOML (fixtures, settings) is someone else's, and leaves the plugin inert.
_CORPUS_TABLE = re.compile(r"^\s*\[\[(case|sweep|divergence|stack)\]\]", re.M)


def _holds_a_corpus(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    for path in itertools.islice(folder.rglob("*.toml"), 50):  # (the first few files decide)
        try:
            if _CORPUS_TABLE.search(path.read_text(encoding="utf-8", errors="replace")):
                return True
        except OSError:
            continue
    return False


@pytest.hookimpl(tryfirst=True)  # before xdist's DSession reads --max-worker-restart
def pytest_configure(config: pytest.Config) -> None:
    # (before `active`: such a path may have cost the run the rootdir whose cases/ makes it active)
    options.refuse_spaced_paths_outside(config)
    if not active(config):
        return
    from conformance import lifetime, native
    from conformance.plugin import controller, run_state, selection

    lifetime.end_without_collecting()  # (controller and workers: their exit need not collect the heap)
    native.guard()  # a framework dropped from sys.modules is never imported again (corrupted) in this process
    selection.register_markers(config)
    settings = options.settings(config)
    options.set_corpus_roots(config, settings.cases)
    run_state.start(config)
    if options.is_worker(config):
        lifetime.exit_without_finalizing()
        controller_pid = int(config.workerinput.get(run_state.CONTROLLER_PID_INPUT, 0))  # type: ignore[attr-defined]
        if controller_pid and os.getppid() == controller_pid:  # (a worker on another host has no such parent)
            lifetime.die_with_parent(controller_pid)
        config.pluginmanager.register(ReportsKeptOnlyWhereRead(config, worker=True), "conformance-reports")
        return
    if settings.workers:
        from conformance.plugin import scheduling

        scheduling.prefer_work_stealing(config)
    if settings.workers and config.option.maxworkerrestart is None:
        # Each crash costs a worker restart; the crash limit bounds how many a run can need.
        budget = settings.limits.crash_limit * len(selection.targets(config)) + 4 * settings.workers
        config.option.maxworkerrestart = str(budget)
    config.pluginmanager.register(controller.ResultCollector(config), "conformance-collector")
    config.pluginmanager.register(ReportsKeptOnlyWhereRead(config, worker=False), "conformance-reports")


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    if not active(config):
        return None
    from conformance.plugin import collection, sharding
    from conformance.plugin.terminal import spaced_cases_notice, terminal_safe

    notices = (spaced_cases_notice(config), collection.tiers_left_out(config))
    lines = [f"conformance: {text}" for text in notices if text]
    shard = sharding.plan(config)
    if shard is not None:
        lines.append(f"conformance: {shard.describe()}")
    return [terminal_safe(line) for line in lines] or None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if not active(parent.config):
        return None
    from conformance.plugin import collection

    return collection.collect_file(file_path, parent)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fuzzer, when asked for; and an invalid known-divergence entry fails as its own item,
    whatever -k/-m selected: a typo there would otherwise silently stop excusing (or start hiding)
    results. Valid entries still apply."""
    if not active(config):
        return
    from conformance.plugin import run_state, selection
    from conformance.plugin.items import FuzzItem, InvalidCaseItem
    from conformance.plugin.terminal import report_deselected, terminal_safe

    if not options.is_worker(config):  # (a worker's count reaches the controller at its end)
        report_deselected(config, selection.deselected(config), before_collection_report=True)
    examples = options.settings(config).fuzz_examples
    shard = options.settings(config).shard
    if examples > 0 and (shard is None or shard[0] == 1):  # (the exploration runs once, in the first shard)
        name = f"fuzz[{examples}]"
        items.append(FuzzItem.from_parent(session, name=name, nodeid=f"conformance::{name}"))
    state, settings = run_state.run_state(config), options.settings(config)
    for path, kind, errors in (
        (settings.expectations_path, "expectations", state.known.errors),
        (settings.contracts_path, "contracts", state.contracts.errors),
    ):
        for error in errors if path is not None else ():
            name = terminal_safe(f"{error.case or '(file)'}[{kind}-error]")
            nodeid = f"{error.file}::{name}"
            items.append(InvalidCaseItem.from_parent(session, name=name, path=path, nodeid=nodeid, error=error))
    if settings.workers > 1:  # (the same order in every worker: xdist checks that they collected alike)
        from conformance.plugin import scheduling
        from conformance.plugin.items import BatchItem, ConformanceItem, NotRunItem

        checks = (ConformanceItem, BatchItem, NotRunItem, FuzzItem, InvalidCaseItem)
        scheduling.spread(items, lambda item: isinstance(item, checks), settings.workers)


_natively_deselected_key = pytest.StashKey[list[int]]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    """In a worker, what pytest itself deselected: xdist's controller never hears of it, so the
    worker reports it with the checks `-m` ruled out while collecting."""
    if items and hasattr(items[0], "config") and options.is_worker(items[0].config):
        items[0].config.stash.setdefault(_natively_deselected_key, [0])[0] += len(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """Reports carry copies of an item's records and are sent as they are made; the item's own list
    would hold every record a worker produced until the session ends (a quarter of a GB per worker
    in the large tier). A worker that a check left short of memory retires before this one."""
    if options.is_worker(item.config) and active(item.config):
        from conformance.plugin.items import retire_if_short_of_memory

        retire_if_short_of_memory(item.config)
    try:
        return (yield)
    finally:
        if item.user_properties and active(item.config):
            from conformance.plugin.items import BatchItem, ConformanceItem, NotRunItem

            if isinstance(item, (ConformanceItem, BatchItem, NotRunItem)):
                item.user_properties = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """A check's reports go without the item's keywords: nothing reads them off a report, and every
    process's terminal reporter keeps every report (three per item) to the end of the run. Its
    records go on the call's report only: pytest copies an item's user properties onto each report,
    so the teardown's carried every record too, sent over xdist a second time for nobody (the
    collector reads the call's), and written by `--junitxml` as properties (223 MB for the default
    run: the results file over again)."""
    report = yield
    if isinstance(report, pytest.TestReport) and active(item.config):
        from conformance.plugin.items import BatchItem, ConformanceItem, NotRunItem

        if report.when != "call":  # (a check's, a composite's, an invalid case's)
            _drop_records(report)
        if isinstance(item, (ConformanceItem, BatchItem, NotRunItem)):
            report.keywords = {}
            if report.failed:  # (travels with the report under xdist, as user properties do)
                report.user_properties.append((CHECK_KEY, True))
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)  # around the terminal reporter's own summary
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> Generator[None, object, object]:
    """A failing check is one line of the suite's summary, grouped by cause, not a FAILURES section
    and a FAILED line each: hundreds fail together when a framework regresses. They are held back
    from pytest's own summary while it prints (the counts still include them), unless the run asks
    for them: -v, or -r with f, a or A. Failing harness tests print as usual."""
    from conformance.plugin.terminal import wants_each_failure

    if not active(config) or wants_each_failure(config):
        return (yield)
    failed = terminalreporter.stats.get("failed", [])
    terminalreporter.stats["failed"] = [r for r in failed if (CHECK_KEY, True) not in (r.user_properties or ())]
    try:
        return (yield)
    finally:
        terminalreporter.stats["failed"] = failed


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """The report xdist makes for the check a retired worker did not start: nothing to show, the
    check runs on a fresh worker (conformance/isolation.py)."""
    return ("", "", "") if report.outcome == REQUEUED else None


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Last, once every other hook has seen the report (a worker's xdist has sent it, the controller's
    collector has streamed it): its records leave it. The terminal reporter of every process keeps
    each report to the end of the run, and the records on them were most of a worker's growth."""
    _drop_records(report)


def _drop_records(report: pytest.TestReport) -> None:
    """The report without the records and case errors it carries (user_properties)."""
    if report.user_properties:
        report.user_properties = [(k, v) for k, v in report.user_properties if k not in (RECORD_KEY, CASE_ERROR_KEY)]


class ReportsKeptOnlyWhereRead:
    """Every process's terminal reporter keeps every report (three per check) to the end of the run,
    and no release of caches frees them (conformance/held_memory.py): 0.25 GiB per worker and more
    than a GiB in the controller over the extended tier's 157,000 checks. A worker's reporter
    writes to no one: once xdist has sent a report, the worker forgets it. The controller's
    reads a passed setup or teardown never, and a passed or skipped check's only for its count,
    unless `-r` asks to list them: it keeps a shared stand-in for those, and failures in full.
    `--durations` reads every report's time at the end, setups and teardowns too: it keeps them all."""

    def __init__(self, config: pytest.Config, worker: bool) -> None:
        self.config, self.worker = config, worker
        self.timed = config.option.durations is not None  # (pytest's runner plugin registers --durations)

    @pytest.hookimpl(trylast=True)  # (after the reporter has counted it and xdist has sent it)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        stats: dict[str, list[Any]] = getattr(reporter, "stats", {})
        # (a few categories; it was just added to one of them)
        category = next((name for name, kept in stats.items() if kept and kept[-1] is report), None)
        if category is None:
            return
        kept = stats[category]
        listed = getattr(reporter, "reportchars", "")
        if self.worker:
            kept.pop()
        elif self.timed:
            return
        elif category == "":
            kept.pop()
        elif (category == "passed" and not {"p", "P"} & set(listed)) or (category == "skipped" and "s" not in listed):
            kept[-1] = COUNTED


class _Counted:
    """What the terminal reporter reads of a passed or skipped check it does not list: that it counts."""

    count_towards_summary = True


COUNTED = _Counted()


@pytest.hookimpl(trylast=True)  # (the terminal reporter summarizes after every sessionfinish)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if active(config):
        from conformance.plugin.terminal import leave_out_an_empty_hypothesis_summary

        leave_out_an_empty_hypothesis_summary(config)
    if active(config) and options.is_worker(config):
        from conformance import lifetime, runner
        from conformance.plugin import controller, selection, usage

        config.workeroutput[controller.ENV_KEY] = json.dumps(runner.loaded_environments())  # type: ignore[attr-defined]
        config.workeroutput[controller.USAGE_KEY] = json.dumps(usage.process_usage(config))  # type: ignore[attr-defined]
        natively = config.stash.get(_natively_deselected_key, [0])[0]
        config.workeroutput[controller.DESELECTED_KEY] = selection.deselected(config) + natively  # type: ignore[attr-defined]
        lifetime.collect_no_more()  # (after the last check: pytest collects the heap several times at its end)
