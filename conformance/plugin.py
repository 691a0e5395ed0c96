"""pytest plugin: one test item per case x target x dtype, results collected xdist-safely.

Workers run items and attach each result record to its report (`user_properties`, builtin types
only); the controller, and only the controller, streams those records to disk and writes the
final JSON. Framework details travel from the workers through `config.workeroutput`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from conformance import composites, expectations, hookspecs, isolation, report, runner, timing
from conformance.adapters import ADAPTERS, QUANTITIES, Target, all_targets
from conformance.adapters import jax as jax_adapter
from conformance.adapters.base import no_gpu_reason
from conformance.cases import NON_CASE_FILES, Case, CaseError, case_files, id_lines, load_file
from conformance.compare import CONFORMANT, NOT_RUN, Outcome, Verdict
from conformance.results import ResultsWriter, atomic_write_text, base_environment, read_stream

TIERS = ("default", "extended", "large")
RECORD_KEY = "conformance"
CASE_ERROR_KEY = "conformance_case_error"
ENV_KEY = "conformance_environment"
USAGE_KEY = "conformance_usage"
MARKERS = {
    "numpy": "NumPy im2col target",
    "torch": "PyTorch targets",
    "tensorflow": "TensorFlow targets",
    "jax": "JAX targets",
    "cpu": "targets on the CPU",
    "gpu": "targets on a GPU",
    "conformance": "every case x target x dtype check",
    "extended": "checks of the extended tier (--conformance-tier extended)",
    "large": "checks of the large tier: collected only when -m names it (or with --conformance-tier large)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "dilated-convolution conformance")
    group.addoption(
        "--cases",
        action="append",
        default=[],
        metavar="PATH",
        help="case file or directory to run instead of the default cases/ (repeatable)",
    )
    group.addoption(
        "--conformance-json",
        default="reports/results.json",
        metavar="PATH",
        help="where to write the results JSON (default: reports/results.json; a .jsonl stream sits beside it)",
    )
    group.addoption(
        "--conformance-html",
        default="reports/index.html",
        metavar="PATH",
        help="where to write the HTML report (default: reports/index.html; 'none' to skip it)",
    )
    group.addoption(
        "--conformance-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time limit per framework call; a check past it is stopped and reported as timeout (default 300; 0: none)",
    )
    group.addoption(
        "--conformance-load-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="extra time for the first check of each target in each worker, which imports its framework (default 300)",
    )
    group.addoption(
        "--conformance-memory-limit",
        default="auto",
        metavar="SIZE",
        help="memory each worker may allocate, e.g. 4G; past it a check gets an out-of-memory error "
        "(default auto: 80%% of RAM shared among the workers, none on a machine with an NVIDIA GPU; 'none')",
    )
    group.addoption(
        "--conformance-crash-limit",
        type=int,
        default=3,
        metavar="N",
        help="after N crashes or timeouts of one target, its remaining checks are skipped (default 3)",
    )
    group.addoption(
        "--conformance-repeat",
        type=int,
        default=1,
        metavar="N",
        help="call each framework N times per check; outputs that are not bitwise identical are "
        "reported as nondeterministic (default 1: no repeat)",
    )
    group.addoption(
        "--conformance-gpu-repeat",
        type=int,
        default=3,
        metavar="N",
        help="the same for GPU targets, whose libraries may pick nondeterministic algorithms per shape "
        "(default 3; the larger of this and --conformance-repeat applies)",
    )
    group.addoption(
        "--conformance-gpu",
        choices=("auto", "probe"),
        default="auto",
        help="auto: on a machine without a GPU driver, report each GPU target's checks as skipped in one "
        "item per target and case file, without loading a framework; probe: one item per check, each "
        "asking its framework for a device (default auto)",
    )
    group.addoption(
        "--conformance-tier",
        choices=TIERS,
        default="default",
        help='default: the corpus that runs in minutes; extended: also the larger grids marked tier = "extended"; '
        'large: also the 100,000-check tier (tier = "large"), which -m large selects alone',
    )
    group.addoption(
        "--conformance-target",
        action="append",
        default=[],
        metavar="GLOB",
        help="collect only targets whose id matches (repeatable), e.g. 'torch.*-cpu'; unlike -k, the others are "
        "never collected, which matters for large corpora",
    )
    group.addoption(
        "--conformance-fuzz",
        type=int,
        default=0,
        metavar="N",
        help="also explore N random configurations with Hypothesis across the CPU targets; a divergence is "
        "shrunk to a minimal case and written as a case file under fuzz/ beside the results (default 0: off)",
    )
    group.addoption(
        "--conformance-fuzz-target",
        action="append",
        default=[],
        metavar="GLOB",
        help="fuzz only targets whose id matches (repeatable), e.g. 'torch.*'",
    )
    group.addoption(
        "--conformance-fuzz-seed", type=int, default=0, metavar="SEED", help="the exploration's seed (default 0)"
    )
    group.addoption(
        "--expectations",
        default=None,
        metavar="PATH",
        help="known divergences file (default: cases/expectations.toml under the rootdir; 'none' for none)",
    )


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _targets(config: pytest.Config) -> list[Target]:
    """Built-in targets plus those of `pytest_conformance_adapters` implementations."""
    if _targets_key not in config.stash:
        extra = [adapter for group in config.hook.pytest_conformance_adapters(config=config) for adapter in group]
        config.stash[_targets_key] = all_targets((*ADAPTERS, *extra))
    return config.stash[_targets_key]


def _collected_targets(config: pytest.Config) -> list[Target]:
    globs = config.getoption("conformance_target")
    targets = _targets(config)
    return [t for t in targets if any(fnmatch.fnmatchcase(t.id, g) for g in globs)] if globs else targets


def _collected_tiers(config: pytest.Config) -> tuple[str, ...]:
    """The option's tier and those below it; the large tier also whenever -m names it, so that
    `-m large` alone runs it (and collects nothing else: see `_selected_by_markers`)."""
    tiers = TIERS[: TIERS.index(config.getoption("conformance_tier")) + 1]
    if "large" not in tiers and re.search(r"\blarge\b", config.getoption("markexpr") or ""):
        tiers = (*tiers, "large")
    return tiers


def _selected_by_markers(config: pytest.Config, markers: frozenset[str]) -> bool:
    """Whether -m can select an item with these markers. Collecting 100,000 items only for pytest to
    deselect them costs seconds and hundreds of MB per worker, so a check -m rules out is never made.
    pytest's own deselection still runs afterwards: any doubt (a marker with arguments) keeps the item."""
    expression = config.getoption("markexpr")
    if not expression:
        return True
    if _mark_expression_key not in config.stash:
        try:
            from _pytest.mark.expression import Expression

            compiled = Expression.compile(expression)
        except Exception:  # pytest reports a bad expression itself; collect everything
            compiled = None
        config.stash[_mark_expression_key] = (compiled, {})
    compiled, selected = config.stash[_mark_expression_key]
    if compiled is None:
        return True
    if markers not in selected:  # a few distinct marker sets, each evaluated once
        selected[markers] = bool(compiled.evaluate(lambda name, **arguments: bool(arguments) or name in markers))
    return selected[markers]


def item_markers(case: Case, target: Target) -> frozenset[str]:
    key = (case.tier, target.adapter.framework, target.device)
    if key not in _item_markers:
        _item_markers[key] = frozenset(["conformance", *key[1:], *([case.tier] if case.tier != "default" else [])])
    return _item_markers[key]


_item_markers: dict[tuple[str, str, str], frozenset[str]] = {}


def _no_device_reason(config: pytest.Config, target: Target) -> str | None:
    """Why `target` cannot run on this machine, known without loading its framework (or None)."""
    if target.device != "gpu" or config.getoption("conformance_gpu") == "probe":
        return None
    if _no_gpu_key not in config.stash:
        config.stash[_no_gpu_key] = no_gpu_reason()
    return config.stash[_no_gpu_key]


def _limits(config: pytest.Config) -> isolation.Limits:
    # A worker's own options do not carry the resolved -n; xdist tells each worker the count.
    workers = getattr(config, "workerinput", {}).get("workercount") or getattr(config.option, "numprocesses", None)
    workers = int(workers or 1)
    try:
        option = config.getoption("conformance_memory_limit")
        memory = isolation.default_memory_limit(workers) if option == "auto" else isolation.parse_size(option)
    except ValueError as exc:
        raise pytest.UsageError(f"--conformance-memory-limit: {exc}") from None
    timeout = config.getoption("conformance_timeout")
    return isolation.Limits(
        timeout_s=timeout if timeout and timeout > 0 else None,
        load_timeout_s=max(0.0, config.getoption("conformance_load_timeout")) or None,
        memory_bytes=memory,
        crash_limit=max(1, config.getoption("conformance_crash_limit")),
    )


@pytest.hookimpl(tryfirst=True)  # before xdist's DSession reads --max-worker-restart
def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    for framework in sorted({t.adapter.framework for t in _targets(config)} - set(MARKERS)):
        config.addinivalue_line("markers", f"{framework}: {framework} targets (from pytest_conformance_adapters)")
    default_root = Path(config.rootpath, "cases")
    requested = [Path(p).resolve() for p in config.getoption("cases")]
    config.stash[_roots_key] = requested or [default_root]
    if requested:
        # --cases replaces the default corpus: drop cases/ if it only came from testpaths.
        from_testpaths = config.args_source == pytest.Config.ArgsSource.TESTPATHS
        kept = [a for a in config.args if not (from_testpaths and Path(a).resolve() == default_root)]
        config.args[:] = kept + [str(p) for p in requested if str(p) not in kept]
    expectations_option = config.getoption("expectations")
    expectations_path = None
    if expectations_option != "none":
        expectations_path = _invocation_path(config, expectations_option) if expectations_option else None
        expectations_path = expectations_path or Path(config.rootpath, "cases", expectations.FILE_NAME)
    loaded = expectations.LoadedExpectations([], [])
    if expectations_path is not None:
        label = expectations_path
        if expectations_path.resolve().is_relative_to(config.rootpath):
            label = expectations_path.resolve().relative_to(config.rootpath)
        loaded = expectations.load(expectations_path, str(label))
    config.stash[_expectations_key] = (expectations_path, loaded)
    limits = config.stash[_limits_key] = _limits(config)
    if _is_worker(config):
        state_dir = Path(config.workerinput["conformance_state_dir"])  # type: ignore[attr-defined]
        worker_id = config.workerinput["workerid"]  # type: ignore[attr-defined]
        config.stash[_guard_key] = isolation.WorkerGuard(state_dir, worker_id, limits)
    else:
        state_dir = Path(tempfile.mkdtemp(prefix="conformance-run-"))
        config.add_cleanup(lambda: shutil.rmtree(state_dir, ignore_errors=True))
        config.stash[_state_dir_key] = state_dir
        saved = dict(os.environ)
        workers = int(getattr(config.option, "numprocesses", None) or 0)
        config.stash[_thread_limits_key] = share_cores(workers)
        if workers > 1:
            os.environ.setdefault(jax_adapter.COMPILATION_CACHE_VARIABLE, str(state_dir / "jax-cache"))
        config.add_cleanup(lambda: (os.environ.clear(), os.environ.update(saved)))  # (pytest runs inside tests)
        if getattr(config.option, "numprocesses", None) and config.option.maxworkerrestart is None:
            # Each crash costs a worker restart; the crash limit bounds how many a run can need.
            budget = limits.crash_limit * len(_targets(config)) + 4 * int(config.option.numprocesses)
            config.option.maxworkerrestart = str(budget)
        html_option = config.getoption("conformance_html")
        config.pluginmanager.register(
            ResultCollector(
                _invocation_path(config, config.getoption("conformance_json")),
                None if html_option == "none" else _invocation_path(config, html_option),
                loaded,
                state_dir,
                limits,
            ),
            "conformance-collector",
        )


def share_cores(workers: int) -> dict[str, str]:
    """With W xdist workers, each framework in each worker gets cores // W threads, through the
    variables every one of them reads at import (workers and TensorFlow's child processes inherit
    this process's environment). W processes that each spread every convolution over all cores
    oversubscribe the machine: at -n 2 on 2 cores the frameworks' own time rose by half
    (benchmarks/run.py). Variables already set are left alone. Returns what it set."""
    if workers < 2:
        return {}
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    variables = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
    wanted = {name: str(threads) for name in (*variables, "TF_NUM_INTEROP_THREADS")}
    set_here = {name: value for name, value in wanted.items() if name not in os.environ}
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        set_here["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    os.environ.update(set_here)
    return set_here


def _invocation_path(config: pytest.Config, option: str) -> Path:
    path = Path(option)
    return path if path.is_absolute() else Path(config.invocation_params.dir, path)


_roots_key = pytest.StashKey[list[Path]]()
_targets_key = pytest.StashKey[list[Target]]()
_no_gpu_key = pytest.StashKey[str | None]()
_mark_expression_key = pytest.StashKey[Any]()
_checks_key = pytest.StashKey[dict[str, Any]]()  # checks this process ran, and when (see _count_checks)
_thread_limits_key = pytest.StashKey[dict[str, str]]()  # what share_cores set
_limits_key = pytest.StashKey[isolation.Limits]()
_guard_key = pytest.StashKey[isolation.WorkerGuard]()
_state_dir_key = pytest.StashKey[Path]()
_expectations_key = pytest.StashKey[tuple[Path | None, expectations.LoadedExpectations]]()


def _root_of(config: pytest.Config, path: Path) -> Path | None:
    for root in config.stash[_roots_key]:
        if path.resolve() == root or path.resolve().is_relative_to(root):
            return root
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".toml" or _root_of(parent.config, file_path) is None:
        return None
    if file_path.name == composites.FILE_NAME:
        return CompositesFile.from_parent(parent, path=file_path)
    if file_path.name in NON_CASE_FILES:
        return None
    root = _root_of(parent.config, file_path)
    assert root is not None
    return CaseFile.from_parent(parent, path=file_path, root=root if root.is_dir() else root.parent)


class CompositesFile(pytest.File):
    """The documents' multi-layer examples: each composite through every plain (non-variant) target."""

    def collect(self) -> Any:
        label = (
            str(self.path.relative_to(self.config.rootpath))
            if self.path.is_relative_to(self.config.rootpath)
            else str(self.path)
        )
        loaded, errors = composites.load(self.path, label)
        for error in errors:
            yield InvalidCaseItem.from_parent(
                self, name=terminal_safe(f"{error.case or '(file)'}[case-file-error]"), error=error
            )
        targets = [t for t in _collected_targets(self.config) if not t.adapter.variant]
        lines = id_lines(self.path.read_text())
        not_run = NotRunChecks(self.config)
        for composite in loaded:
            case = dataclasses.replace(composite.as_case(label), line=lines.get(composite.id, 1))
            for dtype in case.dtypes:
                for target in targets:
                    if not _selected_by_markers(self.config, item_markers(case, target)):
                        continue
                    if not not_run.add(case, target, dtype):
                        yield CompositeItem.from_parent(
                            self, name=f"{case.id}[{target.id}-{dtype}]", case=case, target=target, dtype=dtype,
                            composite=composite,
                        )  # fmt: skip
        yield from not_run.items(self)


class CaseFile(pytest.File):
    def __init__(self, *, root: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root

    def collect(self) -> Any:
        loaded = load_file(self.path, self.root.parent)
        for error in loaded.errors:
            name = terminal_safe(f"{error.case or '(file)'}[case-file-error]")
            yield InvalidCaseItem.from_parent(self, name=name, error=error)
        targets = _collected_targets(self.config)
        tiers = _collected_tiers(self.config)
        not_run = NotRunChecks(self.config)
        for case in loaded.cases:
            if case.tier not in tiers:
                continue
            # Derivative targets only for the cases that opt into that order.
            case_targets = [
                t
                for t in targets
                if QUANTITIES.get(t.adapter.quantity, 0) <= case.derivatives
                and _selected_by_markers(self.config, item_markers(case, t))
            ]
            for dtype in case.dtypes:
                for target in case_targets:
                    if not not_run.add(case, target, dtype):
                        yield ConformanceItem.from_parent(
                            self, name=f"{case.id}[{target.id}-{dtype}]", case=case, target=target, dtype=dtype
                        )
        yield from not_run.items(self)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Reports carry copies of an item's records and are sent as they are made; the item's own list
    would hold every record a worker produced until the session ends (a quarter of a GB per worker
    in the large tier)."""
    try:
        return (yield)
    finally:
        if isinstance(item, (ConformanceItem, NotRunItem)):
            item.user_properties = []


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """An invalid known-divergence entry fails as its own item, whatever -k/-m selected: a typo there
    would otherwise silently stop excusing (or start hiding) results. Valid entries still apply."""
    examples = config.getoption("conformance_fuzz")
    if examples > 0:
        items.append(FuzzItem.from_parent(session, name=f"fuzz[{examples}]", nodeid=f"conformance::fuzz[{examples}]"))
    path, loaded = config.stash[_expectations_key]
    if path is None:
        return
    for error in loaded.errors:
        name = terminal_safe(f"{error.case or '(file)'}[expectations-error]")
        items.append(
            InvalidCaseItem.from_parent(session, name=name, path=path, nodeid=f"{error.file}::{name}", error=error)
        )


def _repeat(config: pytest.Config, target: Target) -> int:
    repeat = config.getoption("conformance_repeat")
    if target.device == "gpu":
        repeat = max(repeat, config.getoption("conformance_gpu_repeat"))
    return max(1, repeat)


class ConformanceFailure(Exception):
    pass


# How the frameworks word an allocation failure (NumPy/Python, PyTorch, TensorFlow, XLA).
OUT_OF_MEMORY = re.compile(r"MemoryError|out of memory|can't allocate|ResourceExhausted|RESOURCE_EXHAUSTED", re.I)


# A large tier has 100,000 items in every worker: items share their marker objects and -k keyword
# sets (never changed after collection) instead of holding copies, about a third of an item's memory.
_marks: dict[str, pytest.MarkDecorator] = {}
_keyword_sets: dict[tuple[Any, ...], set[str]] = {}


def _shared_mark(name: str) -> pytest.MarkDecorator:
    if name not in _marks:
        _marks[name] = getattr(pytest.mark, name)
    return _marks[name]


class ConformanceItem(pytest.Item):
    def __init__(self, *, case: Case, target: Target, dtype: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case, self.target, self.dtype = case, target, dtype
        for marker in sorted(item_markers(case, target)):
            mark = _shared_mark(marker).mark  # what add_marker does, without its per-call import
            self.keywords[marker] = mark
            self.own_markers.append(mark)
        key = (case.tags, dtype, target.id)
        if key not in _keyword_sets:
            # -k plain: no modes, no oracles
            _keyword_sets[key] = {
                *case.tags,
                dtype,
                target.adapter.op,
                target.precision,
                target.adapter.variant or "plain",
            }
        self.extra_keyword_matches = _keyword_sets[key]

    def runtest(self) -> None:
        started = time.time()
        record = self._run()
        _count_checks(self.config, 1, started)
        expectations.apply(record, self.config.stash[_expectations_key][1].entries)
        self.user_properties.append((RECORD_KEY, record))
        outcome = Outcome(record["outcome"])
        if outcome in NOT_RUN:
            # Report the skip at the case's line in its file, not inside the plugin.
            raise pytest.skip.Exception(terminal_safe(f"{outcome.value}: {record['message']}"), _use_item_location=True)
        if outcome == Outcome.XFAIL:
            known = record["expectation"]
            raise pytest.xfail.Exception(
                f"known divergence {known['id']} ({record['observed_outcome']}), {known['link']}"
            )
        if outcome == Outcome.XPASS and not record["expectation"]["strict"]:
            return
        if outcome not in CONFORMANT:
            raise ConformanceFailure(record)

    def _run(self) -> dict[str, Any]:
        guard = self.config.stash.get(_guard_key, None)
        if guard is None:  # without xdist: the one process guards itself (a crash still ends the run)
            guard = self.config.stash[_guard_key] = isolation.WorkerGuard(
                self.config.stash[_state_dir_key], "main", self.config.stash[_limits_key]
            )
        broken = guard.broken(self.target.id)
        if broken is not None:
            verdict = Verdict(
                Outcome.SKIP,
                f"not run: {self.target.id} crashed or timed out {broken['count']} time(s) in this run "
                f"(first: {broken['first']}); --conformance-crash-limit is {guard.limits.crash_limit}",
            )
            return runner.make_record(self.case, self.target, self.dtype, verdict)
        # A broken build may die importing its framework, long before the call itself.
        dead = Verdict(Outcome.CRASH, "the process died before the framework call (loading it, or preparing data)")
        guard.starting(self.nodeid, runner.make_record(self.case, self.target, self.dtype, dead))
        try:
            record = runner.run_check(
                self.case,
                self.target,
                self.dtype,
                before_call=guard.progress,
                after_load=guard.loaded,
                repeat=_repeat(self.config, self.target),
            )
        except Exception as exc:  # the harness's own failure: report it on this check, lose nothing
            record = runner.harness_error_record(self.case, self.target, self.dtype, exc)
        finally:
            guard.finished()
        if record["outcome"] == Outcome.ERROR and OUT_OF_MEMORY.search(record["message"] or ""):
            record["message"] += isolation.memory_hint(guard.limits)
        return record

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ConformanceFailure):
            return terminal_safe(failure_text(excinfo.value.args[0]))
        if isinstance(excinfo.value, pytest.xfail.Exception):
            # pytest formats even an xfail's traceback, parsing the source of every frame: about
            # 0.35 s per known divergence, for text nobody reads (the reason is the report's line).
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return (
            self.path,
            (self.case.line - 1 if self.case.line else None),
            f"{self.case.qualified_id} {self.target.id} {self.dtype}",
        )


# Terminal control characters and bidirectional overrides in case text or framework messages could
# clear the screen, recolour it or reorder what a reader sees ("Trojan source"): shown escaped.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def failure_text(record: dict[str, Any]) -> str:
    lines = [
        f"{record['outcome']}: case {record['case']} ({record['case_file']}) on {record['target']}, {record['dtype']}",
        f"  input {record['input_shape']} NHWC, kernel {record['kernel_shape']} HWIO, rate {record['rate']}, "
        f"stride {record['stride']}, padding {record['padding']} -> pads {record['pads']}, groups {record['groups']}",
        f"  {record['message']}",
    ]
    if record.get("error_ratio") is not None or record.get("max_abs_error") is not None:
        lines.append(
            f"  max |error| {record['max_abs_error']}, max rel error {record['max_rel_error']}, "
            f"max ulp {record['max_ulp']}, error/bound {record['error_ratio']}"
        )
    if record.get("reproduction"):
        lines += ["", "reproduction:", record["reproduction"]]
    return "\n".join(lines)


class NotRunChecks:
    """Checks whose device this machine lacks, gathered per (target, tier) while a file is collected:
    on a machine without a GPU they are a third of the corpus, and one pytest item each would cost
    more than all the CPU checks' harness work together."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.checks: dict[tuple[Target, str], list[tuple[Case, str]]] = {}

    def add(self, case: Case, target: Target, dtype: str) -> bool:
        """Keep the check if its target cannot run here (True); False: it needs an item of its own."""
        if _no_device_reason(self.config, target) is None:
            return False
        self.checks.setdefault((target, case.tier), []).append((case, dtype))
        return True

    def items(self, parent: pytest.File) -> Any:
        for (target, tier), checks in self.checks.items():
            suffix = "" if tier == "default" else f"-{tier}"
            yield NotRunItem.from_parent(parent, name=f"not-run{suffix}[{target.id}]", target=target, checks=checks)


class NotRunItem(pytest.Item):
    """Every check of one target (and tier) in one file, skipped for a reason known before any
    framework loads: still one result record per check, so reports show the missing columns."""

    def __init__(self, *, target: Target, checks: list[tuple[Case, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target, self.checks = target, checks
        for marker in sorted(item_markers(checks[0][0], target)):  # (every check here has the same tier)
            self.add_marker(marker)
        self.extra_keyword_matches.update({dtype for _, dtype in checks})
        self.extra_keyword_matches.update(tag for case, _ in checks for tag in case.tags)
        self.extra_keyword_matches.update({target.adapter.op, target.precision, target.adapter.variant or "plain"})

    def runtest(self) -> None:
        reason = _no_device_reason(self.config, self.target) or "not run"
        entries = self.config.stash[_expectations_key][1].entries
        _count_checks(self.config, len(self.checks), time.time())
        for case, dtype in self.checks:
            record = runner.make_record(case, self.target, dtype, Verdict(Outcome.SKIP, reason))
            expectations.apply(record, entries)
            self.user_properties.append((RECORD_KEY, record))
        raise pytest.skip.Exception(f"{self.target.id}: {len(self.checks)} check(s) not run: {reason}")

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.target.id}: {len(self.checks)} checks not run"


class CompositeItem(ConformanceItem):
    def __init__(self, *, composite: composites.Composite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.composite = composite

    def _run(self) -> dict[str, Any]:
        return composites.run_check(self.composite, self.case, self.target, self.dtype)


class FuzzItem(pytest.Item):
    """--conformance-fuzz N: one item that explores, shrinks and writes out what it finds."""

    def runtest(self) -> None:
        from conformance import fuzz

        config = self.config
        targets = fuzz.select(_targets(config), config.getoption("conformance_fuzz_target"))
        if not targets:
            raise pytest.UsageError("--conformance-fuzz-target matches no CPU target")
        out_dir = _invocation_path(config, config.getoption("conformance_json")).parent / "fuzz"
        result = fuzz.explore(
            config.getoption("conformance_fuzz"),
            targets,
            config.stash[_expectations_key][1].entries,
            out_dir,
            seed=config.getoption("conformance_fuzz_seed"),
        )
        if result.divergence is not None:
            record = result.divergence.record
            raise ConformanceFailure(
                f"fuzzing found a divergence ({result.checked} configurations tried, shrunk to a minimal one); "
                f"case file: {result.case_file}\n\n{failure_text(record)}"
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ConformanceFailure):
            return terminal_safe(str(excinfo.value.args[0]))
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return Path(self.config.rootpath), None, self.name


class InvalidCaseItem(pytest.Item):
    """A case (or file) that failed validation: fails with the precise error, nothing else stops."""

    def __init__(self, *, error: CaseError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error
        # The broken case would have run on every target: keep it in any -m selection of them.
        for marker in MARKERS:
            self.add_marker(marker)

    def runtest(self) -> None:
        self.user_properties.append((CASE_ERROR_KEY, dataclasses.asdict(self.error)))
        raise ConformanceFailure(str(self.error))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return terminal_safe(f"invalid case file: {self.error}")

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return (
            self.path,
            (self.error.line - 1 if self.error.line else None),
            terminal_safe(f"invalid case: {self.error.case or self.error.file}"),
        )


def _count_checks(config: pytest.Config, checks: int, started: float) -> None:
    """Checks run in this process, and the span from the first one's start to the last one's end: the
    parallel part of a run, without process start, collection and the report (benchmarks/ uses it)."""
    usage = config.stash.setdefault(_checks_key, {"checks": 0, "first_check_at": started})
    usage["checks"] += checks
    usage["last_check_at"] = time.time()


def process_usage(config: pytest.Config) -> dict[str, Any]:
    """What one process that ran checks used: its peak memory (collection included) and its time split."""
    return {
        **config.stash.get(_checks_key, {"checks": 0}),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        **{kind: round(total, 3) for kind, total in timing.totals().items()},
    }


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if _is_worker(config):
        config.workeroutput[ENV_KEY] = json.dumps(runner.loaded_environments())  # type: ignore[attr-defined]
        config.workeroutput[USAGE_KEY] = json.dumps(process_usage(config))  # type: ignore[attr-defined]


def _corpus_checks(config: pytest.Config) -> list[tuple[str, str, str]]:
    """Every (case, target, dtype) of the corpus, selected or not: what 'stale' is judged against.

    The corpus is what this run was given plus the directory the expectations file sits in (cases/),
    so running one case file does not make the entries for the others look stale.
    """
    targets = [t.id for t in _targets(config)]
    roots = list(config.stash[_roots_key])
    expectations_path = config.stash[_expectations_key][0]
    if expectations_path is not None and expectations_path.parent.is_dir():
        roots.append(expectations_path.parent)
    checks = []
    for path, root in dict(case_files(roots)).items():
        for case in load_file(path, root).cases:
            checks += [(case.qualified_id, t, d) for t in targets for d in case.dtypes]
    return checks


class ResultCollector:
    """Lives on the controller only (or in the single process without xdist)."""

    def __init__(
        self,
        json_path: Path,
        html_path: Path | None,
        known: expectations.LoadedExpectations,
        state_dir: Path,
        limits: isolation.Limits,
    ) -> None:
        self.writer = ResultsWriter(json_path, ["pytest", *sys.argv[1:]])
        self.html_path = html_path
        self.known = known
        self.state_dir = state_dir
        self.limits = limits
        self.frameworks: dict[str, Any] = {}
        self.lost_checks: dict[str, dict[str, Any]] = {}  # target -> crash/timeout tally
        self.processes: dict[str, dict[str, Any]] = {}  # worker id -> process_usage()

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["conformance_state_dir"] = str(self.state_dir)

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        """A worker died running `crashitem`: report it as a crash or timeout record of its own."""
        worker = report.node.gateway.id  # type: ignore[attr-defined]
        record, message, while_loading = isolation.lost_check_record(self.state_dir, worker, crashitem, self.limits)
        if record is None:  # it died outside a framework call (e.g. collecting): say what is known
            report.longrepr = f"{report.longrepr}\n{message}"
            return
        tally = self.lost_checks.setdefault(record["target"], {"count": 0, "first": record["case"], "stopped": False})
        tally["count"] += 1
        # A death while loading stops the target at once: every later check would load it the same way.
        tally["stopped"] = tally["stopped"] or while_loading or tally["count"] >= self.limits.crash_limit
        atomic_write_text(self.state_dir / isolation.BROKEN_TARGETS_FILE, json.dumps(self.lost_checks))
        expectations.apply(record, self.known.entries)
        report.user_properties.append((RECORD_KEY, record))
        report.longrepr = terminal_safe(failure_text(record))
        if record["outcome"] == Outcome.XFAIL:
            report.outcome = "skipped"
            report.wasxfail = f"known divergence {record['expectation']['id']}"  # type: ignore[attr-defined]

    @pytest.hookimpl(tryfirst=True)  # on disk before the terminal says it finished
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when not in ("call", "???"):  # "???": xdist's report for an item whose worker died
            return
        for key, value in report.user_properties:
            if key == RECORD_KEY:
                self.writer.add(value)
            elif key == CASE_ERROR_KEY:
                self.writer.add_case_error(value)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", {})
        if output.get(ENV_KEY):
            for name, info in json.loads(output[ENV_KEY]).items():
                self.frameworks.setdefault(name, info)
        if output.get(USAGE_KEY):  # (a crashed worker sends none; its replacement gets an id of its own)
            self.processes[node.gateway.id] = json.loads(output[USAGE_KEY])

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.writer.records and not self.writer.case_errors:
            return  # a run of the harness's own tests only: leave the last results alone
        environment = base_environment()
        self.frameworks.update({k: v for k, v in runner.loaded_environments().items() if k not in self.frameworks})
        # Only frameworks that produced results: harness tests in the same process run fake adapters.
        ran = {record["framework"] for record in self.writer.records}
        # Keys are frameworks, or targets that run with settings of their own ("tensorflow.conv2d@onednn-on").
        environment["frameworks"] = {k: v for k, v in sorted(self.frameworks.items()) if k.split(".")[0] in ran}
        # Without xdist this process ran the checks; with it, the controller only gathered results.
        own = "controller" if self.processes else "main"
        environment["processes"] = {**self.processes, own: process_usage(session.config)}
        environment["thread_limits"] = session.config.stash.get(_thread_limits_key, {})
        known = expectations.statuses(self.known.entries, self.writer.records, _corpus_checks(session.config))
        self.document = self.writer.finish(environment, ["pytest", *sys.argv[1:]], known)
        if self.html_path is not None:
            report.write_report(self.document, self.html_path)
        self.recovered_report = None
        if self.writer.preserved is not None and self.html_path is not None:
            # The killed run's finished results, drawn beside this run's report.
            self.recovered_report = self.html_path.with_name(f"{self.writer.preserved.stem}.html")
            report.write_report(read_stream(self.writer.preserved), self.recovered_report)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        document = getattr(self, "document", None)
        if document is None:
            return
        summary = document["summary"]
        counts = ", ".join(f"{n} {o}" for o, n in summary["by_outcome"].items())
        terminalreporter.write_sep("-", "conformance")
        terminalreporter.write_line(f"{summary['total']} checks: {counts}")
        if document["case_errors"]:
            terminalreporter.write_line(f"{len(document['case_errors'])} invalid case(s) or file(s)")
        for entry in document["expectations"]:
            if entry["status"] in ("fixed", "partly fixed", "stale", "changed"):  # the ones that need an edit
                terminalreporter.write_line(
                    f"known divergence {entry['id']}: {entry['status']} "
                    f"({entry['xfail']} xfail, {entry['xpass']} xpass, {entry['other']} other failures)",
                    yellow=True,
                )
        for target, tally in sorted(self.lost_checks.items()):
            stopped = tally["stopped"]
            terminalreporter.write_line(
                f"{target}: {tally['count']} check(s) crashed or timed out (first: {tally['first']})"
                + ("; its remaining checks were skipped (--conformance-crash-limit)" if stopped else ""),
                red=True,
            )
        if self.writer.preserved is not None:
            drawn = f"; its report: {self.recovered_report}" if self.recovered_report else ""
            terminalreporter.write_line(
                f"an earlier run was interrupted; its streamed results are kept in {self.writer.preserved}{drawn}",
                yellow=True,
            )
        terminalreporter.write_line(f"results: {self.writer.json_path}")
        if self.html_path is not None:
            terminalreporter.write_line(f"report: {self.html_path}")
