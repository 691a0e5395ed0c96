"""The test items: one check (`ConformanceItem`), one composite through one target
(`CompositeItem`), every check of a target this machine cannot run (`NotRunItem`), the fuzzer
(`FuzzItem`) and a case, file or known-divergence entry that failed validation (`InvalidCaseItem`).

Every item that calls a framework does so through `ConformanceItem._guarded`: the worker guard
notes the check, arms its time limit and caps memory (conformance/isolation.py), and a target that
crashed too often is skipped. Records travel to the controller on the item's report
(`user_properties`, builtin types only).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conformance import check_records, composite_checks, composites, expectations, isolation, runner
from conformance.adapters import Target
from conformance.cases import Case, CaseError
from conformance.compare import CONFORMANT, NOT_RUN, Outcome, Verdict
from conformance.plugin import CASE_ERROR_KEY, RECORD_KEY, framework_warnings
from conformance.plugin.options import settings
from conformance.plugin.run_state import RETIRE_INPUT, SINGLE_PROCESS_WORKER, run_state
from conformance.plugin.selection import (
    batch_keywords,
    every_marker,
    item_keywords,
    item_markers,
    no_device_reason,
    targets,
)
from conformance.plugin.terminal import failure_text, terminal_safe
from conformance.plugin.usage import count_checks, process_usage
from conformance.record_files import WireRecord, to_wire, wire_record
from conformance.records import Record

# How the frameworks word an allocation failure (NumPy/Python, PyTorch, TensorFlow, XLA).
OUT_OF_MEMORY = re.compile(r"MemoryError|out of memory|can't allocate|ResourceExhausted|RESOURCE_EXHAUSTED", re.I)

# A check given the hooks of fault isolation (the record right before the framework call, and
# "loaded"): its record, or for a batch's check whose answer is judged with others, the answer.
Finished = TypeVar("Finished", bound=Record | runner.Answered)
Check = Callable[[Callable[[Record], None], Callable[[], None]], Finished]


# What a check's record says before its framework call (the controller replaces outcome and message
# with what the log says, should the process die), and a batch's checks before they run.
DIED_BEFORE_CALL = Verdict(Outcome.CRASH, "the process died before the framework call (loading it, or preparing data)")
PLANNED = Verdict(Outcome.SKIP, "not run")


class ConformanceFailure(Exception):
    pass


_guard_key = pytest.StashKey[isolation.WorkerGuard]()


def worker_guard(config: pytest.Config) -> isolation.WorkerGuard:
    """This process's guard; without xdist the one process guards itself (a crash still ends the run)."""
    if _guard_key not in config.stash:
        worker = getattr(config, "workerinput", {}).get("workerid", SINGLE_PROCESS_WORKER)
        config.stash[_guard_key] = isolation.WorkerGuard(run_state(config).state_dir, worker, settings(config).limits)
    return config.stash[_guard_key]


# A large tier has 100,000 items in every worker: items share their marker objects and -k keyword
# sets (never changed after collection) instead of holding copies, about a third of an item's memory.
_marks: dict[str, pytest.Mark] = {}
_keyword_sets: dict[tuple[Any, ...], set[str]] = {}


def _carry_markers(item: pytest.Item, markers: Iterable[str]) -> None:
    """What add_marker does, with shared marks and without its per-call import."""
    for name in sorted(markers):
        if name not in _marks:
            _marks[name] = getattr(pytest.mark, name).mark
        item.keywords[name] = _marks[name]
        item.own_markers.append(_marks[name])


class ConformanceItem(pytest.Item):
    def __init__(self, *, case: Case, target: Target, dtype: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case, self.target, self.dtype = case, target, dtype
        _carry_markers(self, item_markers(case, target))
        key = (case.tags, dtype, target.id)
        if key not in _keyword_sets:
            _keyword_sets[key] = item_keywords(case, target, dtype)
        self.extra_keyword_matches = _keyword_sets[key]

    def runtest(self) -> None:
        started = time.time()
        record = self._guarded(self._check)
        count_checks(self.config, 1, started)
        settle(record, self.case, self.target, run_state(self.config).known.entries)
        self.user_properties.append((RECORD_KEY, to_wire([wire_record(record)])))
        outcome = Outcome(record["outcome"])
        if outcome in NOT_RUN:
            # Report the skip at the case's line in its file, not inside the plugin.
            raise pytest.skip.Exception(terminal_safe(f"{outcome.value}: {record['message']}"), _use_item_location=True)
        if outcome == Outcome.XFAIL:
            known = record["expectation"]
            raise pytest.xfail.Exception(
                f"known divergence {known['id']} ({record['observed_outcome']}), {known['link']}"
            )
        if failing(record):
            raise ConformanceFailure(record)

    def _check(self, before_call: Callable[[Record], None], after_load: Callable[[], None]) -> Record:
        return conformance_check(self.config, self.case, self.target, self.dtype)(before_call, after_load)

    def _guarded(self, check: Check[Record]) -> Record:
        unsupported = self._unsupported()
        return guarded(self.config, self.nodeid, self.case, self.target, self.dtype, check, unsupported)

    def _unsupported(self) -> Record | None:
        return unsupported_record(self.config, self.case, self.target, self.dtype)

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


def conformance_check(config: pytest.Config, case: Case, target: Target, dtype: str) -> Check[Record]:
    """One case x target x dtype check, ready for `guarded`."""

    def check(before_call: Callable[[Record], None], after_load: Callable[[], None]) -> Record:
        return runner.run_check(
            case, target, dtype, before_call, after_load=after_load, **_check_settings(config, target)
        )

    return check


def answering_check(
    config: pytest.Config, case: Case, target: Target, dtype: str, planned: Record | None = None
) -> Check[Record | runner.Answered]:
    """`conformance_check` whose answer, where it may be judged with others, comes back unjudged
    (`runner.call_check`; `runner.judge_answers` judges it); `planned`: its batch's record of it,
    which becomes its record. A large-tier check makes its reproduction only once its outcome keeps
    one (`settle`; a crash's, the controller)."""
    reproduce = not check_records.reproduction_deferred(case)

    def check(before_call: Callable[[Record], None], after_load: Callable[[], None]) -> Record | runner.Answered:
        return runner.call_check(
            case, target, dtype, before_call, after_load=after_load, planned=planned, reproduce=reproduce,
            **_check_settings(config, target),
        )  # fmt: skip

    return check


def _check_settings(config: pytest.Config, target: Target) -> dict[str, Any]:
    options = settings(config)
    return {
        "repeat": options.repeat_for(target.device),
        "contracts": run_state(config).contracts,
        "memory_budget": options.limits.check_budget(),
    }


def unsupported_record(
    config: pytest.Config, case: Case, target: Target, dtype: str, planned: Record | None = None
) -> Record | None:
    """The record of a conv check its shapes and settings leave unsupported (`runner.unsupported_record`)."""
    return runner.unsupported_record(case, target, dtype, settings(config).limits.check_budget(), planned)


def guarded(
    config: pytest.Config,
    nodeid: str,
    case: Case,
    target: Target,
    dtype: str,
    check: Check[Finished],
    unsupported: Record | None = None,
    planned: Record | None = None,
) -> Finished | Record:
    """`check` under the worker guard: noted before it starts (so a crash or hang is reported as
    this check's), with its time limit, and not run at all for a target stopped by crashes. A check
    already settled as `unsupported` runs nothing, so it is returned as it is, unguarded. `planned`:
    the check's record as its batch planned it, which the guard notes in place of a new one (a death
    before the framework call is reported with the case's fields, its outcome and message from the log)."""
    guard = worker_guard(config)
    broken = guard.broken(target.id)
    if broken is not None:
        verdict = Verdict(
            Outcome.SKIP,
            f"not run: {target.id} crashed or timed out {broken['count']} time(s) in this run "
            f"(first: {broken['first']}); --conformance-crash-limit is {guard.limits.crash_limit}",
        )
        return check_records.make_record(case, target, dtype, verdict)
    if unsupported is not None:
        return unsupported
    # A broken build may die importing its framework, long before the call itself.
    guard.starting(nodeid, planned or check_records.make_record(case, target, dtype, DIED_BEFORE_CALL))
    result: Finished | Record
    try:
        with framework_warnings.recorded() as seen:
            result = check(guard.progress, guard.loaded)
        if seen:
            _record_of(result)["warnings"] = seen
    except Exception as exc:  # the harness's own failure: report it on this check, lose nothing
        result = check_records.harness_error_record(case, target, dtype, exc)
    finally:
        guard.finished()
    checked = f"{case.qualified_id} {target.id} {dtype}"
    record = _record_of(result)  # (an answer's record says it died in the call: it raised nothing)
    if record["outcome"] == Outcome.ERROR and OUT_OF_MEMORY.search(record["message"] or ""):
        record["message"] += isolation.memory_hint(guard.limits)
        guard.ran_out_of_memory(checked)
    guard.note_memory_held(checked)
    return result


def _record_of(result: Record | runner.Answered) -> Record:
    return result.record if isinstance(result, runner.Answered) else result


def judged_together(config: pytest.Config, answers: list[runner.Answered]) -> list[Record]:
    """The records of a batch's answered checks, judged together (`runner.judge_answers`); should the
    harness fail at it, each check reports that failure, as `guarded` does for one."""
    try:
        return runner.judge_answers(answers, run_state(config).contracts)
    except Exception as exc:
        return [check_records.harness_error_record(a.case, a.target, a.dtype, exc) for a in answers]


def retire_if_short_of_memory(config: pytest.Config) -> None:
    """Before a worker's next check: a worker whose last check ran out of memory, or left it holding
    more than half its limit, ends here, and a fresh one runs this check (conformance/isolation.py).
    Between two checks of a batch, the batch's finished checks are reported from its journal and the
    batch is queued again for the others."""
    if short_of_memory(config):
        worker_guard(config).retire(process_usage(config))


def short_of_memory(config: pytest.Config) -> bool:
    """Whether this worker retires before its next check (`retire_if_short_of_memory`)."""
    guard = config.stash.get(_guard_key, None)
    return guard is not None and guard.exhausted_by is not None and bool(config.workerinput.get(RETIRE_INPUT))  # type: ignore[attr-defined]


def settle(record: Record, case: Case, target: Target, entries: list[expectations.Expectation]) -> None:
    """A finished check's record as it is reported: known divergences applied, then lean if routine,
    or with the reproduction a batch's check left out if not (`answering_check`)."""
    expectations.apply(record, entries)
    check_records.lean(record, case)
    if check_records.wants_reproduction(record):
        runner.with_reproduction(record, case, target, record["dtype"])


def failing(record: Record) -> bool:
    """Whether a check fails the run: not conformant, not excused, not a non-strict entry's pass."""
    outcome = Outcome(record["outcome"])
    if outcome in NOT_RUN or outcome in CONFORMANT or outcome == Outcome.XFAIL:
        return False
    return not (outcome == Outcome.XPASS and not record["expectation"]["strict"])


class BatchItem(pytest.Item):
    """One case x dtype through all its targets as one item (`--conformance-batch`, the default): a
    pytest item costs more than a check of a small case itself. Replicates of one geometry (cases
    that differ only in their data, through the same targets) come a few to an item
    (collection.REPLICATES_PER_BATCH). Each check keeps its own record, outcome, guard and time
    limit; a crash or timeout is reported on the check that caused it, the checks finished before it
    from the batch's journal, and the batch is queued again for the others (conformance/isolation.py)."""

    def __init__(self, *, cases: list[Case], targets: list[Target], dtype: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cases, self.targets, self.dtype = cases, targets, dtype
        self.case = cases[0]  # (the batch's place in its file; its replicates share tags, tier and targets)
        _carry_markers(self, {m for target in targets for m in item_markers(self.case, target)})
        self.extra_keyword_matches.update(batch_keywords(self.case, targets, dtype))

    def runtest(self) -> None:
        state = run_state(self.config)
        # Queued again after a worker died in it: the checks reported then are not run twice.
        reported = isolation.reported_before(state.state_dir, self.nodeid)
        # Target by target, each through the batch's draws: one target's answers are judged together.
        checks = [
            (case, target)
            for target in self.targets
            for case in self.cases
            if (case.qualified_id, target.id, self.dtype) not in reported
        ]
        planned = [check_records.make_record(case, t, self.dtype, PLANNED) for case, t in checks]
        worker_guard(self.config).batch_started(self.nodeid, planned)
        records: list[Record] = []
        sent: list[WireRecord] = []
        try:
            while len(records) < len(checks):
                start, target = len(records), checks[len(records)][1]
                end = next((i for i in range(start, len(checks)) if checks[i][1] is not target), len(checks))
                for case, record in self._run_target(checks[start:end], planned[start:end]):
                    settle(record, case, target, state.known.entries)
                    wired = wire_record(record)
                    worker_guard(self.config).batch_finished_check(wired[1])
                    sent.append(wired)
                    records.append(record)
                if len(records) < len(checks):  # (the journal holds every finished check: the rest run elsewhere)
                    retire_if_short_of_memory(self.config)
        finally:  # (whatever stopped the batch, what it finished goes with its report)
            if sent:
                self.user_properties.append((RECORD_KEY, to_wire(sent)))
        worker_guard(self.config).batch_ended()
        failures = [r for r in records if failing(r)]
        if failures:
            raise ConformanceFailure(batch_failure_text(failures, len(records)))
        if all(Outcome(r["outcome"]) in NOT_RUN for r in records):
            raise pytest.skip.Exception(terminal_safe(f"{len(records)} check(s) not run"), _use_item_location=True)
        known = [r for r in records if r["outcome"] == Outcome.XFAIL]
        if known:  # as its checks' own items would be: x, not a pass that hides a known divergence
            shown = ", ".join(f"{r['target']} {r['expectation']['id']} ({r['observed_outcome']})" for r in known[:3])
            more = f" and {len(known) - 3} more" if len(known) > 3 else ""
            raise pytest.xfail.Exception(f"{len(known)} of {len(records)} checks are known divergences: {shown}{more}")

    def _run_target(self, checks: list[tuple[Case, Target]], planned: list[Record]) -> list[tuple[Case, Record]]:
        """One target's checks of the batch (or the first of them, up to one that leaves this worker
        short of memory), each guarded on its own; the answers judged together once the last has come
        back (a death among them leaves those answered before it unjudged: not in the journal, they
        run again with the checks the batch did not reach)."""
        finished: list[tuple[Case, Record | runner.Answered]] = []
        for (case, target), plan in zip(checks, planned, strict=True):
            started = time.time()
            check = answering_check(self.config, case, target, self.dtype, plan)
            unsupported = unsupported_record(self.config, case, target, self.dtype, plan)
            finished.append(
                (case, guarded(self.config, self.nodeid, case, target, self.dtype, check, unsupported, plan))
            )
            count_checks(self.config, 1, started)
            if short_of_memory(self.config):  # (it retires once these are judged and in the journal)
                break
        answers = [result for _, result in finished if isinstance(result, runner.Answered)]
        if len(answers) > 1:  # (a lone answer is judged as part of its check, as a check's item judges it)
            worker_guard(self.config).answered()
        judged = iter(judged_together(self.config, answers))
        return [(case, next(judged) if isinstance(result, runner.Answered) else result) for case, result in finished]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ConformanceFailure):
            return terminal_safe(str(excinfo.value.args[0]))
        if isinstance(excinfo.value, pytest.xfail.Exception):  # (no traceback: see ConformanceItem's)
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.case.line - 1 if self.case.line else None
        cases = f" and {len(self.cases) - 1} replicate(s)" if len(self.cases) > 1 else ""
        checks = len(self.cases) * len(self.targets)
        return self.path, line, f"{self.case.qualified_id}{cases} {self.dtype}: {checks} checks"


def batch_failure_text(failures: list[Record], checks: int) -> str:
    """Every failing check of a batch, each with its reproduction."""
    shown = [failure_text(r) for r in failures]
    return f"{len(failures)} of the batch's {checks} checks failed:\n\n" + "\n\n".join(shown)


class CompositeItem(ConformanceItem):
    """One of the documents' multi-layer examples through one target, guarded like any check."""

    def __init__(self, *, composite: composites.Composite, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.composite = composite

    def _check(self, before_call: Callable[[Record], None], after_load: Callable[[], None]) -> Record:
        return composite_checks.run_check(
            self.composite, self.case, self.target, self.dtype, before_call=before_call, after_load=after_load
        )

    def _unsupported(self) -> Record | None:
        return None  # (a composite's layers are each asked inside its check: composite_checks)


class NotRunItem(pytest.Item):
    """Every check of one target (and tier) in one file, skipped for a reason known before any
    framework loads: still one result record per check, so reports show the missing columns."""

    def __init__(self, *, target: Target, checks: list[tuple[Case, str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target, self.checks = target, checks
        for marker in sorted(item_markers(checks[0][0], target)):  # (every check here has the same tier)
            self.add_marker(marker)
        for case, dtype in checks:
            self.extra_keyword_matches.update(item_keywords(case, target, dtype))

    def runtest(self) -> None:
        reason = no_device_reason(self.config, self.target) or "not run"
        entries = run_state(self.config).known.entries
        count_checks(self.config, len(self.checks), time.time())
        sent = []
        for case, dtype in self.checks:
            record = check_records.make_record(case, self.target, dtype, Verdict(Outcome.SKIP, reason))
            expectations.apply(record, entries)
            sent.append(wire_record(record))
        self.user_properties.append((RECORD_KEY, to_wire(sent)))
        raise pytest.skip.Exception(f"{self.target.id}: {len(self.checks)} check(s) not run: {reason}")

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.target.id}: {len(self.checks)} checks not run"


class NotRunChecks:
    """Checks whose device this machine lacks, gathered per (target, tier) while a file is collected:
    on a machine without a GPU they are a third of the corpus, and one pytest item each would cost
    more than all the CPU checks' harness work together."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.checks: dict[tuple[Target, str], list[tuple[Case, str]]] = {}

    def add(self, case: Case, target: Target, dtype: str) -> bool:
        """Keep the check if its target cannot run here (True); False: it needs an item of its own."""
        if no_device_reason(self.config, target) is None:
            return False
        self.checks.setdefault((target, case.tier), []).append((case, dtype))
        return True

    def items(self, parent: pytest.File) -> Iterator[NotRunItem]:
        for (target, tier), checks in self.checks.items():
            suffix = "" if tier == "default" else f"-{tier}"
            yield NotRunItem.from_parent(parent, name=f"not-run{suffix}[{target.id}]", target=target, checks=checks)


class FuzzItem(pytest.Item):
    """--conformance-fuzz N: one item that explores, shrinks and writes out what it finds."""

    def runtest(self) -> None:
        from conformance import fuzz

        config = self.config
        options = settings(config)
        fuzz_targets = fuzz.select(targets(config), list(options.fuzz_target_globs))
        if not fuzz_targets:
            raise pytest.UsageError("--conformance-fuzz-target matches no CPU target")
        out_dir = options.json_path.parent / "fuzz"
        result = fuzz.explore(
            options.fuzz_examples,
            fuzz_targets,
            run_state(config).known.entries,
            out_dir,
            seed=options.fuzz_seed,
            contracts=run_state(config).contracts,
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
        for marker in every_marker(self.config):
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


def invalid_item(parent: pytest.Collector, error: CaseError, kind: str = "case-file-error") -> InvalidCaseItem:
    name = terminal_safe(f"{error.case or '(file)'}[{kind}]")
    return InvalidCaseItem.from_parent(parent, name=name, error=error)
