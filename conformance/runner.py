"""Run one check (case x target x dtype) and describe it as a result record.

Independent of pytest: the plugin, the CLI and the harness's own tests all call `run_check`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from conformance import contracts as accumulation_contracts
from conformance import cost, derivatives, held_memory, machine, profiles, reference, timing
from conformance.adapters import OUTPUT, QUANTITIES, CallParams, ConvCall, Target, Unavailable, Unsupported
from conformance.adapters.base import ProcessDied
from conformance.cases import Case, CaseData, materialize
from conformance.compare import CONFORMANT, NOT_RUN, ErrorModel, Expected, Outcome, Verdict, classify, exception_text
from conformance.dtypes import float_format
from conformance.machine import FactValue
from conformance.records import Record
from conformance.semantics import TransposedGeometry

# Frameworks that have run at least once in this process, for the environment block.
_loaded_adapters: dict[str, Any] = {}


@dataclass(frozen=True)
class Prepared:
    """Data and reference for one (case, dtype), shared by every target of it."""

    data: CaseData
    reference: np.ndarray | None  # float64 answer; None when no valid output exists
    abs_products: np.ndarray | None  # sum |x||w| per output element


# Data and the reference are made once per (case, dtype), not once per target. Items of one case
# run back to back (also per xdist worker), so a small cache suffices and bounds memory.
@lru_cache(maxsize=16)
def prepare(case: Case, dtype: str) -> Prepared:
    data = materialize(case, dtype)
    if not case.geometry.has_valid_output:
        return Prepared(data, None, None)
    x64, w64 = data.x.astype(np.float64), data.w.astype(np.float64)
    with timing.spent(timing.REFERENCE):
        values = case.expected_values if case.expected_values is not None else reference_output(case, x64, w64)
        with np.errstate(invalid="ignore"):  # inf * 0 in S is NaN, and S then says "unbounded"
            abs_products = reference_output(case, np.abs(x64), np.abs(w64))
    return Prepared(data, values, np.nan_to_num(abs_products, nan=np.inf))


held_memory.on_release(prepare.cache_clear)


def reference_output(case: Case, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The case's op in float64: the forward convolution, or the transposed one."""
    geo = case.geometry
    if isinstance(geo, TransposedGeometry):
        return reference.conv2d_transpose_resolved(x, w, geo, case.groups)
    return reference.conv2d_resolved(x, w, geo, case.groups)


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


def _tf32_bound(target: Target, dtype: str) -> bool:
    # "defaults" on a GPU may run float32 through TF32: judge it against TF32's bound.
    return target.precision == "defaults" and dtype == "float32"


# Seeded random data: rounding errors on them may be modelled as independent with mean zero, the
# probabilistic bound's assumption. Constants, ramps, stated values and model weights are not.
RANDOM_GENERATORS = frozenset({"normal", "uniform"})


def random_operands(case: Case) -> bool:
    return all(
        spec.get("generator") in RANDOM_GENERATORS and not spec.get("set")
        for spec in (case.input_spec, case.kernel_spec)
    )


def error_model(case: Case, dtype: str, target: Target) -> ErrorModel:
    return ErrorModel(
        float_format(dtype),
        derivatives.accumulation_length(case, OUTPUT),
        tf32=_tf32_bound(target, dtype),
        random_data=random_operands(case),
    )


def with_contract(
    expected: Expected, target: Target, dtype: str, contracts: accumulation_contracts.Contracts
) -> Expected:
    """The expected answer with the target's accumulation contract, where one is stated (a TF32 bound
    has none: TF32 is a contract of its own)."""
    if expected.values is None or expected.exact or expected.model.tf32:
        return expected
    found = contracts.find(target.id, target.adapter.quantity, target.device, target.precision, dtype)
    if found is None:
        return expected
    return replace(
        expected, contract=replace(expected.model, accumulation=found.accumulation_format), contract_id=found.id
    )


def expected_answer(case: Case, dtype: str, target: Target, prepared: Prepared) -> Expected:
    model = error_model(case, dtype, target)
    no_output_axes = tuple(axis + 1 for axis in case.geometry.no_output_axes)
    exact = prepared.abs_products is not None and model.requires_exact(
        prepared.data.x, prepared.data.w, prepared.abs_products
    )
    return Expected(
        values=prepared.reference,
        abs_products=prepared.abs_products,
        output_shape=case.output_shape,
        model=model,
        exact=exact,
        no_output_axes=no_output_axes,
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
    return _full_reproduction(case, dtype, source, adapter.quantity, tangents)


# Outcomes that need no reproduction to act on. A large-tier record of one leaves its reproduction
# out (`lean`): 60% of such a record's bytes, in a tier of hundreds of thousands of them.
ROUTINE_OUTCOMES = CONFORMANT | NOT_RUN


def lean(record: Record, case: Case) -> Record:
    """A settled record (known divergences applied) without the reproduction a routine large-tier
    check does not need; `python -m conformance reproduce CASE TARGET DTYPE` writes it on demand."""
    if case.tier == "large" and record["outcome"] in ROUTINE_OUTCOMES and record.get("reproduction"):
        record["reproduction"] = ""
    return record


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
    `crash`): fault isolation keeps it, so a check that kills its process is still reported in full;
    `after_load` is told when the framework is loaded (a death before that is the build's, not the case's).
    With `repeat` > 1 the framework is called that many times on the same data, and a target whose
    outputs are not bitwise identical is `nondeterministic` (unless it already failed otherwise).
    `contracts`: the accumulation contracts values are judged against after the dtype's bound.
    `memory_budget`: what the check may allocate and where that figure comes from; a check whose
    estimate (conformance/cost.py) exceeds it is `unsupported` before anything is allocated.
    """
    started = time.perf_counter()
    spent_before = timing.totals()
    adapter = target.adapter
    params = call_params(case, dtype)
    prepared: Prepared | None = None
    reproduction = ""
    output_hash: str | None = None
    tangents: derivatives.Tangents | None = None
    facts: dict[str, FactValue] = {}
    reason = adapter.unsupported_reason(params)
    if adapter.operation != case.op:  # (collection pairs them; this guards every other caller)
        reason = f"{adapter.name} computes {adapter.operation}; this case is {case.op}"
    if not reason and memory_budget is not None:
        reason = _over_memory_budget(adapter, params, memory_budget)
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
            reproduction = adapter.reproduction(call, target.device, target.precision)
            if before_call is not None:
                crashed = Verdict(Outcome.CRASH, "the process died during the framework call")
                before_call(make_record(case, target, dtype, crashed, prepared, reproduction, tangents=tangents))
            raised: Exception | None = None
            got = None
            try:
                with timing.spent(timing.FRAMEWORK):
                    got = adapter.run(call, target.device, target.precision)
            except (Unavailable, Unsupported, ProcessDied):
                raise
            except Exception as exc:  # a framework error is a finding, not a harness failure
                raised = exc
            _loaded_adapters.setdefault(adapter.name if adapter.own_environment else adapter.framework.name, adapter)
            facts = runtime_facts(adapter)
            if tangents is not None:
                expected = derivatives.expected(
                    case,
                    dtype,
                    adapter.quantity,
                    tangents,
                    tf32=_tf32_bound(target, dtype),
                    random_data=random_operands(case),
                )
            else:
                expected = expected_answer(case, dtype, target, prepared)
            expected = with_contract(expected, target, dtype, contracts)
            if adapter.baseline is not None and expected.values is not None:
                base = _baseline_output(case, dtype, adapter.baseline, call, target)
                baseline_name = adapter.baseline.name + (
                    f" on {adapter.baseline_device}" if adapter.baseline_device else ""
                )
                verdict = _judge_against_baseline(baseline_name, base, expected, got, raised)
            else:
                verdict = classify(expected, got, raised)
            output_hash = _output_hash(got)
            if repeat > 1 and raised is None:
                repeats = _repeat_calls(adapter, call, target, got, repeat)
                if repeats is not None and verdict.outcome in (Outcome.PASS, Outcome.EXPECTED_ERROR):
                    verdict = replace(verdict, outcome=Outcome.NONDETERMINISTIC, message=repeats)
                elif repeats is not None:
                    verdict = replace(verdict, message=f"{verdict.message}; also {repeats}")
        except Unsupported as exc:
            verdict = Verdict(Outcome.UNSUPPORTED, str(exc))
        except Unavailable as exc:
            verdict = Verdict(Outcome.SKIP, str(exc))
        except ProcessDied as exc:
            verdict = Verdict(Outcome.CRASH, str(exc))
    duration = time.perf_counter() - started
    record = make_record(case, target, dtype, verdict, prepared, reproduction, duration, output_hash, tangents)
    record.update(timing.since(spent_before))
    if facts:
        record["runtime"] = machine.check_facts(facts, dtype)
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
# against the same one, and a case's items run back to back, so a few entries are enough.
_baseline_outputs: OrderedDict[tuple[Any, ...], np.ndarray | Exception] = OrderedDict()
BASELINE_CACHE_SIZE = 8
held_memory.on_release(_baseline_outputs.clear)


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
        if len(_baseline_outputs) > BASELINE_CACHE_SIZE:
            _baseline_outputs.popitem(last=False)
    return _baseline_outputs[key]


def _judge_against_baseline(
    baseline: str, base: np.ndarray | Exception, expected: Expected, got: Any, raised: Exception | None
) -> Verdict:
    """An equivalence oracle: this formulation against the same framework's primary one (`base`, its
    output or exception), on the same data, independent of the reference. Each is within the bound of
    the exact result, so they may differ by twice the bound; exact integer data must match bit for bit."""
    if isinstance(base, Exception):
        base_error = exception_text(base)
        if raised is not None:
            return Verdict(Outcome.PASS, f"both formulations raise (primary: {base_error})")
        shape = list(np.shape(got))
        return Verdict(
            Outcome.SHAPE,
            f"{baseline} raised ({base_error}); this formulation returned shape {shape}",
            got_shape=shape,
        )
    if tuple(np.shape(base)) != tuple(expected.output_shape):
        return _against_misshapen_baseline(baseline, base, expected, got, raised)
    against = replace(
        expected,
        values=np.asarray(base, dtype=np.float64),
        model=replace(expected.model, scale=2.0),
        contract=replace(expected.contract, scale=2.0) if expected.contract is not None else None,
        output_shape=np.shape(base),
    )
    verdict = classify(against, got, raised)
    verdict.message = (f"against {baseline}: " + verdict.message) if verdict.message else ""
    if verdict.outcome == Outcome.PASS and verdict.max_abs_error == 0:
        verdict.message = f"bitwise equal to {baseline}"
    return verdict


def _against_misshapen_baseline(
    baseline: str, base: np.ndarray, expected: Expected, got: Any, raised: Exception | None
) -> Verdict:
    """The primary call returned the wrong shape (its own check says so): no bound can hold this
    formulation to it. The same shape and bits agree with it; anything else is the framework
    disagreeing with itself, which is this oracle's finding."""
    due, base_shape = list(expected.output_shape), list(np.shape(base))
    if raised is not None:
        return Verdict(Outcome.SHAPE, f"{baseline} returned shape {base_shape} ({due} was due); this formulation "
                       f"raised {exception_text(raised)}")  # fmt: skip
    shape = list(np.shape(got))
    if shape == base_shape and _output_hash(got) == _output_hash(base):
        return Verdict(Outcome.PASS, f"bitwise equal to {baseline}, whose shape {base_shape} is wrong ({due} was due)")
    return Verdict(
        Outcome.SHAPE,
        f"{baseline} returned shape {base_shape} ({due} was due); this formulation returned shape {shape}",
        got_shape=shape,
    )


def _repeat_calls(adapter: Any, call: ConvCall, target: Target, first: Any, repeat: int) -> str | None:
    """Call the framework again on the same data; None when every output has the first one's bits."""
    first_hash = _output_hash(first)
    hashes = [first_hash]
    worst, worst_at = 0.0, None
    for _ in range(repeat - 1):
        try:
            with timing.spent(timing.FRAMEWORK):
                again = adapter.run(call, target.device, target.precision)
        except Exception as exc:
            return f"the repeated call raised {exception_text(exc)}"
        hashes.append(_output_hash(again))
        if hashes[-1] != first_hash and np.shape(again) == np.shape(first):
            with np.errstate(invalid="ignore"):
                difference = np.abs(np.asarray(again, np.float64) - np.asarray(first, np.float64))
            if difference.size and np.nanmax(difference) > worst:
                worst = float(np.nanmax(difference))
                worst_at = [int(i) for i in np.unravel_index(np.nanargmax(difference), difference.shape)]
    distinct = len(set(hashes))
    if distinct == 1:
        return None
    where = f"; largest difference {worst:.3g} at {worst_at}" if worst_at is not None else ""
    return f"not bitwise reproducible: {distinct} different outputs in {repeat} calls on the same data{where}"


HARNESS_FAILED = "the harness failed before a verdict"  # how a harness_error_record's message opens


def harness_error_record(case: Case, target: Target, dtype: str, exc: BaseException) -> Record:
    """The record of a check that the harness itself could not finish (e.g. the reference ran out
    of memory): reported as an error with the reason rather than lost."""
    return make_record(case, target, dtype, Verdict(Outcome.ERROR, f"{HARNESS_FAILED}: {exception_text(exc)}"))


def _output_hash(got: Any) -> str | None:
    """Hash of the output's bits: run-to-run and version-to-version diffs see changes inside the bound."""
    if got is None:
        return None
    array = np.ascontiguousarray(got)
    return hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).hexdigest()[:16]


def _profile() -> Record:
    """The machine profile the run's processes started with (conformance/profiles.py), unless the host's."""
    label = profiles.current()
    return {"profile": label} if label else {}


def _backend_version(target: Target) -> Record:
    """A front-end's record also names its backend's version (Keras 3 on JAX: JAX's)."""
    framework = target.adapter.framework
    return {"backend_version": framework.backend_version()} if framework.backend else {}


def make_record(
    case: Case,
    target: Target,
    dtype: str,
    verdict: Verdict,
    prepared: Prepared | None = None,
    reproduction: str = "",
    duration_s: float = 0.0,
    output_hash: str | None = None,
    tangents: derivatives.Tangents | None = None,
) -> Record:
    geo = case.geometry
    return {
        "case": case.qualified_id,
        "case_file": case.file,
        "target": target.id,
        "framework": target.adapter.framework.name,
        "framework_version": target.adapter.version(),
        **_backend_version(target),
        **_profile(),
        "op": target.adapter.op,
        "variant": target.adapter.variant,
        "quantity": target.adapter.quantity,
        "baseline": target.adapter.baseline.name if target.adapter.baseline is not None else None,
        "device": target.device,
        "precision": target.precision,
        "dtype": dtype,
        "outcome": verdict.outcome.value,
        "input_shape": list(case.input_shape),
        "kernel_shape": list(case.kernel_shape),
        "output_shape": list(case.output_shape),
        "got_shape": verdict.got_shape,
        "got_dtype": verdict.got_dtype,
        "rate": list(case.rate),
        "stride": list(case.stride),
        "padding": case.padding if isinstance(case.padding, (str, int)) else [list(p) for p in case.padding],
        "pads": [list(geo.pads[0]), list(geo.pads[1])],
        "groups": case.groups,
        "operation": case.op,
        **({"output_padding": list(geo.output_padding)} if isinstance(geo, TransposedGeometry) else {}),
        "expect": "no-valid-output" if case.expects_no_output else case.expect_kind,
        "exact": verdict.exact,
        "max_abs_error": verdict.max_abs_error,
        "max_rel_error": verdict.max_rel_error,
        "max_ulp": verdict.max_ulp,
        "error_ratio": verdict.error_ratio,
        "bounds": verdict.bounds,
        "worst": verdict.worst,
        "error_map": verdict.error_map,
        "message": verdict.message,
        "reproduction": _full_reproduction(case, dtype, reproduction, target.adapter.quantity, tangents)
        if reproduction
        else "",
        "input_sha256": prepared.data.x_hash if prepared else None,
        "kernel_sha256": prepared.data.w_hash if prepared else None,
        "output_sha256": output_hash,
        "description": case.description,
        "tags": list(case.tags),
        "duration_s": round(duration_s, 6),
    }


@lru_cache(maxsize=64)  # a check's record is made twice (before the call, after it) with the same source
def _full_reproduction(
    case: Case, dtype: str, call_source: str, quantity: str = OUTPUT, tangents: derivatives.Tangents | None = None
) -> str:
    """Copy-paste source: the case's tensors (inline when small) followed by the framework call;
    for a derivative, also its seeded cotangent dy (and the HVP direction vx, vw)."""
    return _tensors_source(case, dtype, quantity, tangents) + call_source


@lru_cache(maxsize=16)  # every target of a case shares it: a case's checks run back to back
def _tensors_source(case: Case, dtype: str, quantity: str, tangents: derivatives.Tangents | None) -> str:
    lines = ["import numpy as np"]
    tensors: list[tuple[str, Mapping[str, Any], tuple[int, ...]]] = [
        ("x", case.input_spec, case.input_shape),
        ("w", case.kernel_spec, case.kernel_shape),
    ]
    if quantity != OUTPUT:
        assert tangents is not None, "a derivative's reproduction needs its tangents"
        names = ("dy", "vx", "vw") if quantity.startswith("hvp") else ("dy",)
        specs = tangents.specs
        tensors += [(name, *specs[name]) for name in names]
    for name, spec, shape in tensors:
        layout = "HWIO" if name in ("w", "vw") else "NHWC"
        lines.append(f"{name} = {_tensor_source(spec, shape)}  # {layout}")
    lines.append(f"# case {case.qualified_id} ({case.file}), dtype {dtype}")
    return "\n".join(lines) + "\n"


INLINE_LIMIT = 256  # elements; larger tensors are rebuilt from their generator spec


def _tensor_source(spec: Any, shape: tuple[int, ...]) -> str:
    if "file" in spec:
        return f"np.load({spec['file']!r})[{spec['key']!r}].astype(np.float64)"
    if "values" in spec:
        return f"np.array({_literal(spec['values'])}, dtype=np.float64)"
    kind = spec["generator"] if "set" not in spec else "set"  # special values set into a generated tensor
    if kind in ("ones", "zeros"):
        return f"np.{kind}({list(shape)}, dtype=np.float64)"
    if kind == "full":
        return f"np.full({list(shape)}, {spec['value']!r}, dtype=np.float64)"
    if kind == "arange":
        start, step = spec.get("start", 0), spec.get("step", 1)
        count = int(np.prod(shape))
        return f"({start!r} + {step!r} * np.arange({count}, dtype=np.float64)).reshape({list(shape)})"
    if int(np.prod(shape)) <= INLINE_LIMIT:
        from conformance.generators import generate

        return f"np.array({_literal(generate(spec, shape).tolist())}, dtype=np.float64)"
    spec_text = _literal({**spec})
    return (
        f"__import__('conformance.generators').generators.generate({spec_text}, {tuple(shape)})"
        "  # pip install this suite for the pinned generator"
    )


def _literal(values: Any) -> str:
    """Nested lists as Python source; NaN and infinities spelled so that they evaluate."""
    return repr(values).replace("nan", "float('nan')").replace("inf", "float('inf')")


def loaded_environments() -> dict[str, Any]:
    """Runtime details of every framework this process has run (never imports one for it)."""
    info: dict[str, Any] = {}
    for framework, adapter in _loaded_adapters.items():
        try:
            info[framework] = adapter.environment()
        except Exception as exc:  # the report should still be written
            info[framework] = {"error": f"{type(exc).__name__}: {exc}"}
    return info
