"""Judging one check: the expected answer (the reference under the dtype's error bound, the target's
accumulation contract), an equivalence oracle against its framework's primary formulation, and
repeated calls against the first one. Nothing here runs a framework: `conformance.runner` runs,
this module decides what the answers mean.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from conformance import contracts as accumulation_contracts
from conformance import derivatives, held_memory, reference, timing
from conformance.adapters.base import OUTPUT, Target
from conformance.cases import Case, CaseData, materialize
from conformance.compare import KEEP_JUDGING_UP_TO, ErrorModel, Expected, Outcome, Verdict, classify, forget_stacked
from conformance.dtypes import float_format
from conformance.exception_text import exception_text
from conformance.semantics import TransposedGeometry


@dataclass(frozen=True)
class Prepared:
    """Data and reference for one (case, dtype), shared by every target of it."""

    data: CaseData
    reference: np.ndarray | None  # float64 answer; None when no valid output exists
    abs_products: np.ndarray | None  # sum |x||w| per output element


# Data and the reference are made once per (case, dtype), not once per target. Items of one case
# run back to back (also per xdist worker), so a small cache suffices and bounds memory.
@held_memory.bounded_cache(16)
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


def reference_output(case: Case, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The case's op in float64: the forward convolution, or the transposed one."""
    geo = case.geometry
    if isinstance(geo, TransposedGeometry):
        return reference.conv_transpose_resolved(x, w, geo, case.groups)
    return reference.conv_resolved(x, w, geo, case.groups)


def tf32_bound(target: Target, dtype: str) -> bool:
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
        tf32=tf32_bound(target, dtype),
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


# The expected answers of the last few (case, dtype)s, per TF32 bound: a batch judges each of its
# targets against the same ones (target by target, each through the batch's draws), and `Expected`
# keeps what judging derives from it (compare.Expected.judging), as the group's stack keeps theirs.
_expected: held_memory.BoundedEntries[tuple[Prepared, Expected]] = held_memory.BoundedEntries(16)
held_memory.on_release(forget_stacked)


def expected_answer(case: Case, dtype: str, target: Target, prepared: Prepared) -> Expected:
    key = (case, dtype, tf32_bound(target, dtype))
    if key in _expected:
        kept_for, expected = _expected[key]
        if kept_for is prepared:
            return expected
    expected = _expected_answer(case, dtype, target, prepared)
    _expected[key] = (prepared, expected)
    return expected


def _expected_answer(case: Case, dtype: str, target: Target, prepared: Prepared) -> Expected:
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


def judge_against_baseline(
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
    against = against_baseline(base, expected)
    if against is None:
        return _against_misshapen_baseline(baseline, base, expected, got, raised)
    return said_against_baseline(classify(against, got, raised), baseline)


# The last few small outputs' bounds (`against_baseline`), each with its primary output and expected
# answer (compared by identity): a batch's oracles of one framework are judged one target after
# another against the same primary outputs of its draws, and so share these, and their stack
# (compare.classify_together).
_against: list[tuple[np.ndarray, Expected, Expected]] = []
KEEP_AGAINST = 16  # (collection.REPLICATES_PER_BATCH draws of one geometry, and a few more)
held_memory.on_release(_against.clear)


def against_baseline(base: np.ndarray | Exception, expected: Expected) -> Expected | None:
    """What an equivalence oracle's answer is held to: `expected` with the primary formulation's
    output in place of the reference's, and twice its bound (each is within the bound of the exact
    result). None where the primary call raised or returned the wrong shape (`judge_against_baseline`)."""
    if isinstance(base, Exception) or tuple(np.shape(base)) != tuple(expected.output_shape):
        return None
    for kept_base, kept_expected, kept in _against:
        if kept_base is base and kept_expected is expected:
            return kept
    against = replace(
        expected,
        values=np.asarray(base, dtype=np.float64),
        model=replace(expected.model, scale=2.0),
        contract=replace(expected.contract, scale=2.0) if expected.contract is not None else None,
        output_shape=np.shape(base),
    )
    if np.size(base) <= KEEP_JUDGING_UP_TO:  # (a large one is judged alone, and not held)
        _against[:] = [*_against[1 - KEEP_AGAINST :], (base, expected, against)]
    return against


def said_against_baseline(verdict: Verdict, baseline: str) -> Verdict:
    """A verdict against the primary formulation's output (`against_baseline`), its message saying so."""
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
    if shape == base_shape and output_hash(got) == output_hash(base):
        return Verdict(Outcome.PASS, f"bitwise equal to {baseline}, whose shape {base_shape} is wrong ({due} was due)")
    return Verdict(
        Outcome.SHAPE,
        f"{baseline} returned shape {base_shape} ({due} was due); this formulation returned shape {shape}",
        got_shape=shape,
    )


def judge_repeats(first: Any, again: list[Any], raised: Exception | None = None) -> str | None:
    """Repeated calls on the same data (`again`, and the exception that stopped them, if one did)
    against the first call's output: None when every output has the first one's bits."""
    if raised is not None:
        return f"the repeated call raised {exception_text(raised)}"
    first_hash = output_hash(first)
    hashes = [first_hash]
    worst, worst_at = 0.0, None
    for output in again:
        hashes.append(output_hash(output))
        if hashes[-1] != first_hash and np.shape(output) == np.shape(first):
            with np.errstate(invalid="ignore"):
                difference = np.abs(np.asarray(output, np.float64) - np.asarray(first, np.float64))
            if difference.size and np.nanmax(difference) > worst:
                worst = float(np.nanmax(difference))
                worst_at = [int(i) for i in np.unravel_index(np.nanargmax(difference), difference.shape)]
    distinct = len(set(hashes))
    if distinct == 1:
        return None
    where = f"; largest difference {worst:.3g} at {worst_at}" if worst_at is not None else ""
    return f"not bitwise reproducible: {distinct} different outputs in {len(hashes)} calls on the same data{where}"


def output_hash(got: Any) -> str | None:
    """Hash of the output's bits: run-to-run and version-to-version diffs see changes inside the bound."""
    if got is None:
        return None
    array = np.ascontiguousarray(got)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.reshape(-1).view(np.uint8).data)  # (its buffer: no copy of the output)
    return digest.hexdigest()[:16]
