"""Run one check (case x target x dtype) and describe it as a result record.

Independent of pytest: the plugin, the CLI and the harness's own tests all call `run_check`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from conformance import contracts as accumulation_contracts
from conformance import cost, derivatives, held_memory, judging, machine, timing
from conformance.adapters.base import OUTPUT, QUANTITIES, CallParams, ConvCall, Target
from conformance.cases import Case
from conformance.check_records import full_reproduction, judged, make_record
from conformance.compare import Outcome, Verdict, classify, classify_together
from conformance.exception_text import exception_text
from conformance.judging import Prepared, prepare
from conformance.machine import FactValue
from conformance.records import Record
from conformance.refusals import REFUSALS, Unavailable, Unsupported, refusal_verdict

# What a check's record says until its framework call returns: a death in it is reported so.
DIED_IN_CALL = Verdict(Outcome.CRASH, "the process died during the framework call")

# Frameworks that have run at least once in this process, for the environment block.
_loaded_adapters: dict[str, Any] = {}


@lru_cache(maxsize=64)  # a batch's targets ask back to back (Case hashes by identity)
def call_params(case: Case, dtype: str) -> CallParams:
    return CallParams(
        input_shape=case.input_shape,
        kernel_shape=case.kernel_shape,
        rate=case.rate,
        stride=case.stride,
        padding=case.padding,
        geometry=case.geometry,
        groups=case.groups,
        dtype=dtype,
    )


def conv_call(
    case: Case, dtype: str, quantity: str, prepared: Prepared
) -> tuple[ConvCall, derivatives.Tangents | None]:
    """The call a target is given for a case: its data, and for a derivative its seeded tangents."""
    call = ConvCall(
        x=prepared.data.x,
        w=prepared.data.w,
        rate=case.rate,
        stride=case.stride,
        padding=case.padding,
        geometry=case.geometry,
        groups=case.groups,
        dtype=dtype,
    )
    if quantity == OUTPUT:
        return call, None
    tangents = derivatives.tangents(case, dtype)
    call = replace(
        call,
        cotangent=tangents.cotangent,
        direction_input=tangents.direction_input,
        direction_kernel=tangents.direction_kernel,
    )
    return call, tangents


def reproduction_of(case: Case, target: Target, dtype: str) -> str:
    """A check's reproduction, as its record would carry it, without running anything (the
    framework is not imported): `python -m conformance reproduce`."""
    adapter = target.adapter
    call, tangents = conv_call(case, dtype, adapter.quantity, prepare(case, dtype))
    source = adapter.reproduction(call, target.device, target.precision)
    return full_reproduction(case, dtype, source, adapter.quantity, tangents)


def with_reproduction(record: Record, case: Case, target: Target, dtype: str) -> Record:
    """`record` (in place) with the reproduction its check left out (`call_check` without
    `reproduce`). One that cannot be written says why, as a comment: the record is reported anyway."""
    try:
        record["reproduction"] = reproduction_of(case, target, dtype)
    except Exception as exc:
        record["reproduction"] = f"# the reproduction could not be written: {exception_text(exc)}\n"
    return record


@dataclass
class Answered:
    """A check whose framework call returned an answer that may be judged with others (`judge_answers`):
    its record as it stood before the call, and what finishing it needs."""

    case: Case
    target: Target
    dtype: str
    record: Record
    prepared: Prepared
    got: np.ndarray
    called_s: float  # from the check's start until the answer came back
    spent: Record  # what loading, the framework and the reference took in that time (`timing.since`)
    facts: dict[str, FactValue]
    # An equivalence oracle's: the primary formulation's output on the same data (or what it raised), and its name.
    base: np.ndarray | Exception | None = None
    baseline_name: str = ""


def run_check(
    case: Case,
    target: Target,
    dtype: str,
    before_call: Callable[[Record], None] | None = None,
    repeat: int = 1,
    after_load: Callable[[], None] | None = None,
    contracts: accumulation_contracts.Contracts = accumulation_contracts.NONE,
    memory_budget: tuple[int, str] | None = None,
) -> Record:
    """Run one check and return its result record (builtin types only: it crosses processes).

    `before_call` gets the record as it stands right before the framework runs (its outcome says
    `crash`): fault isolation writes it out, so a check that kills its process is still reported in
    full. It is the check's one record, finished in place after the call: what keeps it copies it;
    `after_load` is told when the framework is loaded (a death before that is the build's, not the case's).
    With `repeat` > 1 the framework is called that many times on the same data, and a target whose
    outputs are not bitwise identical is `nondeterministic` (unless it already failed otherwise).
    `contracts`: the accumulation contracts values are judged against after the dtype's bound.
    `memory_budget`: what the check may allocate and where that figure comes from; a check whose
    estimate (conformance/cost.py) exceeds it is `unsupported` before anything is allocated.
    """
    called = call_check(case, target, dtype, before_call, repeat, after_load, contracts, memory_budget)
    return called if not isinstance(called, Answered) else judge_answers([called], contracts)[0]


def call_check(
    case: Case,
    target: Target,
    dtype: str,
    before_call: Callable[[Record], None] | None = None,
    repeat: int = 1,
    after_load: Callable[[], None] | None = None,
    contracts: accumulation_contracts.Contracts = accumulation_contracts.NONE,
    memory_budget: tuple[int, str] | None = None,
    planned: Record | None = None,
    reproduce: bool = True,
) -> Record | Answered:
    """`run_check` up to its framework call's answer: the finished record, or, for an answer that
    `judge_answers` may judge with others (a forward output called once; an equivalence oracle's
    with its primary formulation's output), the check as `Answered`. What the check spends after
    the call is its judging alone. `planned`: the check's record as its batch planned it, which
    becomes its record (`check_records.make_record`). Without `reproduce` the record has no
    reproduction: `with_reproduction` adds it where its outcome keeps one."""
    started = time.perf_counter()
    spent_before = timing.totals()
    adapter = target.adapter
    prepared: Prepared | None = None
    reproduction = ""
    output_hash: str | None = None
    tangents: derivatives.Tangents | None = None
    facts: dict[str, FactValue] = {}
    record: Record | None = None  # made once, right before the framework call, and finished after it
    reason = unsupported_reason(case, target, dtype, memory_budget)
    if reason:
        verdict = Verdict(Outcome.UNSUPPORTED, reason)
    else:
        try:
            with timing.spent(timing.LOAD):
                adapter.check_available(target.device)
            if after_load is not None:
                after_load()
            prepared = prepare(case, dtype)
            call, tangents = conv_call(case, dtype, adapter.quantity, prepared)
            reproduction = adapter.reproduction(call, target.device, target.precision) if reproduce else ""
            record = make_record(
                case, target, dtype, DIED_IN_CALL, prepared, reproduction, tangents=tangents, planned=planned
            )
            if before_call is not None:
                before_call(record)  # (fault isolation writes it out now: it is finished below)
            raised: Exception | None = None
            got = None
            try:
                with timing.spent(timing.FRAMEWORK):
                    got = adapter.run(call, target.device, target.precision)
            except REFUSALS:
                raise
            except Exception as exc:  # a framework error is a finding, not a harness failure
                raised = exc
            _loaded_adapters.setdefault(adapter.name if adapter.own_environment else adapter.framework.name, adapter)
            facts = runtime_facts(adapter)
            judged_later = raised is None and tangents is None and repeat == 1
            if judged_later and isinstance(got, np.ndarray) and prepared.reference is not None:
                base, baseline_name = None, ""
                if adapter.baseline is not None:
                    base = _baseline_output(case, dtype, adapter.baseline, call, target)
                    baseline_name = _baseline_name(adapter)
                called_s = time.perf_counter() - started
                spent = timing.since(spent_before)
                return Answered(case, target, dtype, record, prepared, got, called_s, spent, facts, base, baseline_name)
            if tangents is not None:
                expected = derivatives.expected(
                    case,
                    dtype,
                    adapter.quantity,
                    tangents,
                    tf32=judging.tf32_bound(target, dtype),
                    random_data=judging.random_operands(case),
                )
            else:
                expected = judging.expected_answer(case, dtype, target, prepared)
            expected = judging.with_contract(expected, target, dtype, contracts)
            if adapter.baseline is not None and expected.values is not None:
                base = _baseline_output(case, dtype, adapter.baseline, call, target)
                verdict = judging.judge_against_baseline(_baseline_name(adapter), base, expected, got, raised)
            else:
                verdict = classify(expected, got, raised)
            output_hash = judging.output_hash(got)
            if repeat > 1 and raised is None:
                repeats = _repeated_call_differences(adapter, call, target, got, repeat)
                if repeats is not None and verdict.outcome in (Outcome.PASS, Outcome.EXPECTED_ERROR):
                    verdict = replace(verdict, outcome=Outcome.NONDETERMINISTIC, message=repeats)
                elif repeats is not None:
                    verdict = replace(verdict, message=f"{verdict.message}; also {repeats}")
        except REFUSALS as exc:
            verdict = refusal_verdict(exc)
    duration = time.perf_counter() - started
    if record is None:
        record = make_record(
            case, target, dtype, verdict, prepared, reproduction, duration, output_hash, tangents, planned
        )
    else:
        judged(record, verdict, duration, output_hash)
    record.update(timing.since(spent_before))
    if facts:
        record["runtime"] = machine.check_facts(facts, dtype)
    return record


def judge_answers(
    answers: Sequence[Answered], contracts: accumulation_contracts.Contracts = accumulation_contracts.NONE
) -> list[Record]:
    """The records of checks whose answers came back (`call_check`), judged together where they can be
    (`compare.classify_together`: one target's draws of one geometry, say; an oracle's answers against
    its primary formulation's, `judging.against_baseline`); each check's duration is its time until
    its answer plus its share of the judging."""
    began = time.perf_counter()
    expected = [
        judging.with_contract(
            judging.expected_answer(a.case, a.dtype, a.target, a.prepared), a.target, a.dtype, contracts
        )
        for a in answers
    ]
    # What each answer is held to: the reference, or for an oracle its primary formulation's output
    # (None where that cannot bound it, a primary call that raised or misshaped: judged alone).
    held_to = [
        want if a.base is None else judging.against_baseline(a.base, want)
        for a, want in zip(answers, expected, strict=True)
    ]
    stacked = [(a, held) for a, held in zip(answers, held_to, strict=True) if held is not None]
    together = iter(classify_together([held for _, held in stacked], [a.got for a, _ in stacked]))
    verdicts = []
    for a, want, held in zip(answers, expected, held_to, strict=True):
        if held is None and a.base is not None:  # (None only for an oracle's: `held_to`)
            verdicts.append(judging.judge_against_baseline(a.baseline_name, a.base, want, a.got, None))
        else:
            verdict = next(together)
            verdicts.append(verdict if a.base is None else judging.said_against_baseline(verdict, a.baseline_name))
    share = (time.perf_counter() - began) / max(len(answers), 1)
    records = []
    for answered, verdict in zip(answers, verdicts, strict=True):
        record = judged(answered.record, verdict, answered.called_s + share, judging.output_hash(answered.got))
        record.update(answered.spent)
        if answered.facts:
            record["runtime"] = machine.check_facts(answered.facts, answered.dtype)
        records.append(record)
    return records


def unsupported_reason(case: Case, target: Target, dtype: str, memory_budget: tuple[int, str] | None) -> str | None:
    """Why the check cannot run, decided from its shapes and settings alone (nothing is imported or
    allocated), or None: the target's API cannot state it, or its estimate exceeds `memory_budget`."""
    return _case_unsupported_reason(case, target.adapter, dtype, memory_budget)


# A batch asks before its guard and `run_check` again: keyed by identity, no call's fields hashed.
@lru_cache(maxsize=256)
def _case_unsupported_reason(case: Case, adapter: Any, dtype: str, memory_budget: tuple[int, str] | None) -> str | None:
    return _unsupported_reason(adapter, call_params(case, dtype), case.op, case.rank, memory_budget)


# Shapes and settings alone decide it: the large tier's replicates of one geometry ask the same
# question hundreds of times.
@lru_cache(maxsize=4096)
def _unsupported_reason(
    adapter: Any, params: CallParams, operation: str, rank: int, memory_budget: tuple[int, str] | None
) -> str | None:
    reason: str | None = adapter.unsupported_reason(params)
    if mismatch := adapter.mismatch(operation, rank):  # (collection pairs them; this guards every other caller)
        reason = mismatch
    if not reason and memory_budget is not None:
        reason = _over_memory_budget(adapter, params, memory_budget)
    return reason


def unsupported_record(
    case: Case,
    target: Target,
    dtype: str,
    memory_budget: tuple[int, str] | None = None,
    planned: Record | None = None,
) -> Record | None:
    """The record `run_check` would return for a check `unsupported_reason` settles, or None: such a
    check runs nothing, so it needs no fault isolation (a third of the large tier). `planned`: as
    `call_check`'s, left as it is when the check is supported."""
    started = time.perf_counter()
    reason = unsupported_reason(case, target, dtype, memory_budget)
    if not reason:
        return None
    verdict = Verdict(Outcome.UNSUPPORTED, reason)
    record = make_record(case, target, dtype, verdict, duration_s=time.perf_counter() - started, planned=planned)
    record.update(timing.NOTHING_SPENT)
    return record


# Shapes alone decide it (about 30 us an estimate): the large tier's replicates of one geometry share it.
@lru_cache(maxsize=1024)
def _over_memory_budget(adapter: Any, params: CallParams, memory_budget: tuple[int, str]) -> str | None:
    """Why the check's estimated peak (the harness's part and the formulation's) exceeds the budget, or None."""
    order = QUANTITIES.get(adapter.quantity, 0)
    needed = cost.harness(cost.Shapes.of(params), order) + adapter.memory_estimate(params)
    return cost.over_budget(needed, *memory_budget)


_runtime_facts: dict[Any, dict[str, FactValue]] = {}  # adapters hash by identity


def runtime_facts(adapter: Any) -> dict[str, FactValue]:
    """The adapter's runtime facts, read once per process. A failure to read them (a child that died
    answering) is no fact for this check, and is asked again next time."""
    if adapter not in _runtime_facts:
        try:
            _runtime_facts[adapter] = dict(adapter.runtime_facts())
        except Exception:
            return {}
    return _runtime_facts[adapter]


# The primary call's output per (case, dtype, baseline target): every oracle of a framework judges
# against the same one, and a batch runs its targets one after another through its draws (at most
# collection.REPLICATES_PER_BATCH cases), so a few more entries than that are enough.
_baseline_outputs: held_memory.BoundedEntries[np.ndarray | Exception] = held_memory.BoundedEntries(16)


def _baseline_output(case: Case, dtype: str, baseline: Any, call: ConvCall, target: Target) -> np.ndarray | Exception:
    device = target.adapter.baseline_device or target.device
    key = (case, dtype, baseline, device, target.precision)  # Case and Adapter hash by identity
    if key not in _baseline_outputs:
        try:
            with timing.spent(timing.FRAMEWORK):
                _baseline_outputs[key] = baseline.run(call, device, target.precision)
        except (Unavailable, Unsupported):
            raise
        except Exception as exc:
            _baseline_outputs[key] = exc
    return _baseline_outputs[key]


def _baseline_name(adapter: Any) -> str:
    """An equivalence oracle's primary formulation, as its verdicts name it."""
    return str(adapter.baseline.name) + (f" on {adapter.baseline_device}" if adapter.baseline_device else "")


def _repeated_call_differences(adapter: Any, call: ConvCall, target: Target, first: Any, repeat: int) -> str | None:
    """Call the framework again on the same data, `repeat` calls in all, and judge them against the first."""
    again: list[Any] = []
    for _ in range(repeat - 1):
        try:
            with timing.spent(timing.FRAMEWORK):
                again.append(adapter.run(call, target.device, target.precision))
        except Exception as exc:
            return judging.judge_repeats(first, again, exc)
    return judging.judge_repeats(first, again)


def loaded_environments() -> dict[str, Any]:
    """Runtime details of every framework this process has run (never imports one for it)."""
    info: dict[str, Any] = {}
    for framework, adapter in _loaded_adapters.items():
        try:
            info[framework] = adapter.environment()
        except Exception as exc:  # the report should still be written
            info[framework] = {"error": f"{type(exc).__name__}: {exc}"}
    return info
