"""pytest plugin: one test item per case x target x dtype, results collected xdist-safely.

Installed, it loads in every pytest run (the `pytest11` entry point) and is inert unless asked for:
`--cases` given, or a rootdir whose cases/ holds case files. Inert, it has added its options and
nothing else: no markers, no items, no results, no change to pytest's own settings or output.

This module holds only the hooks; each job has a module of its own:

- `options`     the command-line options, read once into typed `Settings`
- `selection`   targets (built-in and from `pytest_conformance_adapters`), tiers, markers, `-m` while collecting
- `run_state`   what a run shares across processes: state directory, known divergences, workers' environment
- `collection`  case files and composites.toml -> items
- `items`       the item kinds, and the guard every framework call runs under
- `controller`  the controller's collector: streamed records, crash records, results JSON, report
- `terminal`    failure text, the run's one-screen summary, the count of checks `-m` ruled out
- `framework_warnings`  a framework's warnings during a check, into its record (shown once per target)
- `usage`       what each process that ran checks used

Workers run items and attach each result record to its report (`user_properties`, builtin types
only); the controller, and only the controller, streams those records to disk and writes the
final JSON. Framework details travel from the workers through `config.workeroutput`.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path

import pytest

from conformance import hookspecs, runner
from conformance.plugin import collection, controller, options, run_state, selection, usage
from conformance.plugin.items import ConformanceItem, FuzzItem, InvalidCaseItem, NotRunItem
from conformance.plugin.terminal import report_deselected, terminal_safe


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


_active_key = pytest.StashKey[bool]()


def active(config: pytest.Config) -> bool:
    """Whether this run asked for the suite: `--cases`, or the rootdir's own corpus (cases/*.toml)."""
    if _active_key not in config.stash:
        corpus = Path(config.rootpath, "cases")
        found = bool(config.getoption("cases")) or (corpus.is_dir() and next(corpus.rglob("*.toml"), None) is not None)
        config.stash[_active_key] = found
    return config.stash[_active_key]


@pytest.hookimpl(tryfirst=True)  # before xdist's DSession reads --max-worker-restart
def pytest_configure(config: pytest.Config) -> None:
    if not active(config):
        return
    selection.register_markers(config)
    settings = options.settings(config)
    collection.set_roots(config, settings.cases)
    run_state.start(config)
    if run_state.is_worker(config):
        return
    if settings.workers and config.option.maxworkerrestart is None:
        # Each crash costs a worker restart; the crash limit bounds how many a run can need.
        budget = settings.limits.crash_limit * len(selection.targets(config)) + 4 * settings.workers
        config.option.maxworkerrestart = str(budget)
    config.pluginmanager.register(controller.ResultCollector(config), "conformance-collector")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    return collection.collect_file(file_path, parent) if active(parent.config) else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The fuzzer, when asked for; and an invalid known-divergence entry fails as its own item,
    whatever -k/-m selected: a typo there would otherwise silently stop excusing (or start hiding)
    results. Valid entries still apply."""
    if not active(config):
        return
    if not run_state.is_worker(config):  # (a worker's count reaches the controller at its end)
        report_deselected(config, selection.deselected(config), before_collection_report=True)
    examples = options.settings(config).fuzz_examples
    if examples > 0:
        name = f"fuzz[{examples}]"
        items.append(FuzzItem.from_parent(session, name=name, nodeid=f"conformance::{name}"))
    path = options.settings(config).expectations_path
    if path is None:
        return
    for error in run_state.run_state(config).known.errors:
        name = terminal_safe(f"{error.case or '(file)'}[expectations-error]")
        nodeid = f"{error.file}::{name}"
        items.append(InvalidCaseItem.from_parent(session, name=name, path=path, nodeid=nodeid, error=error))


_natively_deselected_key = pytest.StashKey[list[int]]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    """In a worker, what pytest itself deselected: xdist's controller never hears of it, so the
    worker reports it with the checks `-m` ruled out while collecting."""
    if items and hasattr(items[0], "config") and run_state.is_worker(items[0].config):
        items[0].config.stash.setdefault(_natively_deselected_key, [0])[0] += len(items)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    """Reports carry copies of an item's records and are sent as they are made; the item's own list
    would hold every record a worker produced until the session ends (a quarter of a GB per worker
    in the large tier)."""
    try:
        return (yield)
    finally:
        if isinstance(item, (ConformanceItem, NotRunItem)):
            item.user_properties = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if active(config) and run_state.is_worker(config):
        config.workeroutput[controller.ENV_KEY] = json.dumps(runner.loaded_environments())  # type: ignore[attr-defined]
        config.workeroutput[controller.USAGE_KEY] = json.dumps(usage.process_usage(config))  # type: ignore[attr-defined]
        natively = config.stash.get(_natively_deselected_key, [0])[0]
        config.workeroutput[controller.DESELECTED_KEY] = selection.deselected(config) + natively  # type: ignore[attr-defined]
