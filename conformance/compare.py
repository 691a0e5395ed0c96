"""Outcome classification and the per-element error bounds (DESIGN.md sections 3 and 4).

The case dtype's bound for one output element of a dot product of length n in a format with unit
roundoff u (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5):

    |y_hat - y| <= gamma_n(u) * S + u * |y| + n * eta + gamma_n(2**-53) * S

with S = sum |x||w| over the element's window (computed exactly like the reference, on
absolute values), gamma_n(u) = n*u / (1 - n*u), u*|y| for rounding the result into the
output format, n*eta for products that underflow (eta: the format's smallest normal, which
also covers flush-to-zero), and the last term for the float64 reference's own rounding.
It is the worst the dtype allows: every partial sum rounded in the case dtype. Beyond it: `mismatch`.

An accumulation contract (`conformance/contracts.py`) states what a framework keeps instead, e.g.
float16 products summed in float32 and the result rounded once to float16. Its bound:

    u_out * |y| + (1 + u_out) * gamma_n(u_acc) * S + n * eta_acc + u_out * eta_out + gamma_n(2**-53) * S

(rounding the accumulated value s_hat once costs u_out * |s_hat| <= u_out * (|y| + gamma_n(u_acc) * S);
u_out * eta_out is that rounding's absolute error where the result is subnormal). Within the dtype's
bound but beyond the contract's: `contract`.

Long accumulations. Where gamma_n(u) is infinite (n*u >= 1) or looser than the probabilistic bound of
Higham and Mary (SIAM J. Sci. Comput. 41(5), 2019, Theorem 3.1) by more than LOOSENESS_LIMIT, and the
operands are seeded random data, gamma_n is replaced by

    gamma~_n(lambda) = exp(lambda * sqrt(n) * u + n * u**2 / (1 - u)) - 1

which holds for the whole dot product with probability at least 1 - 2n exp(-lambda**2 (1-u)**2 / 2)
when the rounding errors are independent with mean zero. lambda is chosen per n so that this failure
probability is ELEMENT_FALSE_ALARM, which over at most PROBABILISTIC_ELEMENT_CAP judged elements a run
keeps the expected number of false alarms below RUN_FALSE_ALARMS (docs/precision.md says why the
model's assumptions hold for these kernels, and where they would not).
Exact-integer data whose every partial sum is representable must match bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from conformance.dtypes import TF32_PRECISION_BITS, FloatFormat
from conformance.error_maps import error_map
from conformance.exception_text import first_line

FLOAT64_UNIT_ROUNDOFF = 2.0**-53

WORST_CASE = "worst-case"
PROBABILISTIC = "probabilistic"
LOOSENESS_LIMIT = 10.0  # the worst case judges unless it is this much looser than the probabilistic bound
RUN_FALSE_ALARMS = 1e-6  # expected false alarms per run of the default and extended tiers, at most
PROBABILISTIC_ELEMENT_CAP = 10**9  # elements a run judges probabilistically, at most (tests/test_precision.py counts)
ELEMENT_FALSE_ALARM = RUN_FALSE_ALARMS / PROBABILISTIC_ELEMENT_CAP


class Outcome(StrEnum):
    PASS = "pass"
    MISMATCH = "mismatch"
    SHAPE = "shape"
    ERROR = "error"
    MISSING_ERROR = "missing-error"
    EXPECTED_ERROR = "expected-error"
    UNSUPPORTED = "unsupported"
    SKIP = "skip"
    CRASH = "crash"
    TIMEOUT = "timeout"
    NONDETERMINISTIC = "nondeterministic"  # repeat mode: the same call gave different bits
    CONTRACT = "contract"  # within the dtype's worst-case bound, beyond the framework's accumulation contract
    XFAIL = "xfail"
    XPASS = "xpass"


CONFORMANT = frozenset({Outcome.PASS, Outcome.EXPECTED_ERROR})
NOT_RUN = frozenset({Outcome.UNSUPPORTED, Outcome.SKIP})


def gamma(n: int, u: float) -> float:
    """gamma_n = n*u / (1 - n*u); infinite once n*u >= 1 (no meaningful bound is left)."""
    nu = n * u
    return nu / (1.0 - nu) if nu < 1.0 else float("inf")


def probabilistic_lambda(n: int, u: float, failure: float = ELEMENT_FALSE_ALARM) -> float:
    """lambda with 2n exp(-lambda**2 (1-u)**2 / 2) = failure: Theorem 3.1's failure probability."""
    return math.sqrt(2.0 * math.log(2.0 * max(n, 1) / failure)) / (1.0 - u)


def probabilistic_gamma(n: int, u: float, failure: float = ELEMENT_FALSE_ALARM) -> float:
    """Higham and Mary's gamma~_n(lambda) = exp(lambda sqrt(n) u + n u**2 / (1 - u)) - 1."""
    lam = probabilistic_lambda(n, u, failure)
    return math.expm1(lam * math.sqrt(n) * u + n * u * u / (1.0 - u))


@dataclass(frozen=True)
class ErrorModel:
    """How much error a conformant target may make, for one (case, dtype, precision mode)."""

    fmt: FloatFormat  # the output's format (the case dtype)
    accumulation_length: int  # n = k_h * k_w * C_in / groups
    tf32: bool = False  # float32 products whose inputs are first rounded to TF32
    scale: float = 1.0  # 2 when two computations, each within the bound, are compared with each other
    # A contract's accumulator (partial sums kept in it, one rounding to fmt at the end); None: the
    # dtype's worst case, every partial sum rounded in fmt.
    accumulation: FloatFormat | None = None
    # The operands are seeded random data, so rounding errors may be modelled as independent: the
    # probabilistic bound may judge a long accumulation.
    random_data: bool = False

    @property
    def unit_roundoff(self) -> float:
        """u of the partial sums."""
        if self.tf32:
            return 2.0**-TF32_PRECISION_BITS
        return (self.accumulation or self.fmt).unit_roundoff

    @property
    def rounding_steps(self) -> int:
        # TF32 rounds each product's two inputs before an exact product: two more roundings.
        return self.accumulation_length + (2 if self.tf32 else 0)

    @cached_property  # (every verdict's bound facts name it)
    def accumulation_gamma(self) -> tuple[float, str]:
        """The accumulation's relative-error constant, and which analysis gives it."""
        return _accumulation_gamma(self.rounding_steps, self.unit_roundoff, self.random_data)

    @property
    def rule(self) -> str:
        """The bound in words, for failure messages."""
        kind = self.accumulation_gamma[1]
        name = "gamma~" if kind == PROBABILISTIC else "gamma"
        term = f"{name}_{self.rounding_steps}(u={self.unit_roundoff:.3g}) * sum|x||w|"
        if self.accumulation is None:
            return f"{kind} bound: {term} + u|y| + ..."
        return (
            f"{kind} bound of {self.accumulation.name} accumulation, one rounding to {self.fmt.name}: "
            f"u_out|y| + {term} + ..."
        )

    @np.errstate(over="ignore", invalid="ignore")  # an Inf product makes the bound Inf there: no bound is due
    def bound(self, reference: np.ndarray, abs_products: np.ndarray) -> np.ndarray:
        n = self.accumulation_length
        accumulated = self.accumulation_gamma[0] * abs_products
        if self.accumulation is None:
            terms = accumulated + self.unit_roundoff * np.abs(reference) + n * self.fmt.smallest_normal
        else:
            u_out = self.fmt.unit_roundoff
            terms = (
                u_out * np.abs(reference)
                + (1.0 + u_out) * accumulated
                + n * self.accumulation.smallest_normal
                + u_out * self.fmt.smallest_normal
            )
        bound: np.ndarray = self.scale * (terms + gamma(n, FLOAT64_UNIT_ROUNDOFF) * abs_products)
        return bound

    def requires_exact(self, x: np.ndarray, w: np.ndarray, abs_products: np.ndarray) -> bool:
        """Integer data whose largest partial sum fits the significand: any order is exact."""
        if not (_integer_valued(x) and _integer_valued(w)):
            return False
        bits = self.fmt.precision_bits
        if self.tf32:
            # TF32 rounds each operand to 11 bits; products of 11-bit integers are exact in float32's 24.
            limit = 2.0**TF32_PRECISION_BITS
            if np.abs(x).max(initial=0.0) > limit or np.abs(w).max(initial=0.0) > limit:
                return False
        return bool(abs_products.max(initial=0.0) <= 2.0**bits)


@lru_cache(maxsize=256)  # (every verdict states it; a run has a few dozen accumulation lengths)
def _accumulation_gamma(steps: int, u: float, random_data: bool) -> tuple[float, str]:
    worst = gamma(steps, u)
    if random_data:
        likely = probabilistic_gamma(steps, u)
        if not math.isfinite(worst) or worst > LOOSENESS_LIMIT * likely:
            return likely, PROBABILISTIC
    return worst, WORST_CASE


def _integer_valued(a: np.ndarray) -> bool:
    a = np.asarray(a, dtype=np.float64)
    return bool(np.all(np.isfinite(a)) and np.all(a == np.round(a)))


@dataclass
class Verdict:
    outcome: Outcome
    message: str = ""
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    max_ulp: float | None = None
    error_ratio: float | None = None
    exact: bool = False
    worst: dict[str, Any] | None = None
    got_shape: list[int] | None = None
    got_dtype: str | None = None
    error_map: dict[str, Any] | None = None  # where a mismatch sits, for the report's heatmap
    # Each bound that judged the values: {"dtype": {...}, "contract": {...}}, with its kind and ratio.
    bounds: dict[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class Expected:
    """Everything the classifier needs about the right answer for one (case, dtype, mode)."""

    values: np.ndarray | None  # float64; None when no valid output exists
    abs_products: np.ndarray | None  # S per element, float64
    output_shape: tuple[int, ...]
    model: ErrorModel
    exact: bool
    no_output_axes: tuple[int, ...] = ()  # the spatial axes (1, 2) with no valid position
    layout: str = "NHWC"  # of the compared tensor: "HWIO" for a kernel gradient
    contract: ErrorModel | None = None  # the framework's accumulation contract, where one is stated
    contract_id: str = ""

    @property
    def index_names(self) -> str:
        return ", ".join(self.layout.lower())

    @property
    def judging(self) -> _Judging:
        """What judging derives from the expected answer alone. Every target of a batch is judged
        against one `Expected` (judging.expected_answer): for a small output (where NumPy's per-call
        cost is most of a comparison) it is made once; a large one's would hold several times the
        reference's memory between checks, and is made again each time."""
        kept: _Judging | None = self.__dict__.get("_judging")
        if kept is not None:
            return kept
        made = _Judging.of(self)
        if made.bound.size <= KEEP_JUDGING_UP_TO:
            object.__setattr__(self, "_judging", made)  # (not a field: equality and replace() ignore it)
        return made


KEEP_JUDGING_UP_TO = 1 << 16  # output elements


@dataclass(frozen=True)
class _Judging:
    ordered_ref: np.ndarray  # the reference rounded to the case's format, as ordered bits (`ulp_distance`)
    bound: np.ndarray  # per element; zeros for an exact check
    ref_finite: np.ndarray
    all_finite: bool
    abs_ref: np.ndarray
    ref_nonzero: np.ndarray
    all_nonzero: bool  # (then a relative error needs no mask)
    all_bounded: bool  # every bound above zero (then error/bound needs no mask)
    finite_bounds: bool  # (an Inf product makes a bound Inf, and an Inf answer's ratio there NaN)

    @classmethod
    def of(cls, expected: Expected) -> _Judging:
        ref = expected.values
        assert ref is not None and expected.abs_products is not None
        fmt = expected.model.fmt
        with np.errstate(over="ignore"):  # a reference beyond the format's range rounds to inf
            ref_in_format = ref.astype(fmt.numpy_dtype)
        ref_finite = np.isfinite(ref)
        bound = np.zeros_like(ref) if expected.exact else expected.model.bound(ref, expected.abs_products)
        ref_nonzero = ref != 0
        return cls(
            ordered_ref=_ordered_bits(ref_in_format),
            bound=bound,
            ref_finite=ref_finite,
            all_finite=bool(ref_finite.all()),
            abs_ref=np.abs(ref),
            ref_nonzero=ref_nonzero,
            all_nonzero=bool(ref_nonzero.all()),
            all_bounded=bool((bound > 0).all()),
            finite_bounds=bool(np.isfinite(bound).all()),
        )

    @property
    def plain(self) -> bool:
        """Every reference element finite, nonzero and with a positive finite bound, and there are
        some: `_within_bound` may judge an answer (with no NumPy warning the general path would not give)."""
        return self.all_finite and self.all_nonzero and self.all_bounded and self.finite_bounds and self.bound.size > 0


def classify(expected: Expected, got: Any = None, raised: BaseException | None = None) -> Verdict:
    """One outcome for one target's answer. `got` is a NumPy array (after the adapter's layout fix)."""
    if expected.values is None:
        return _classify_no_output(expected, got, raised)
    if raised is not None:
        return Verdict(Outcome.ERROR, f"raised {type(raised).__name__}: {first_line(raised)} (a value was due)")
    got = np.asarray(got)
    verdict_shape = list(got.shape)
    want_dtype = expected.model.fmt.numpy_dtype
    if got.shape != expected.output_shape:
        return Verdict(
            Outcome.SHAPE,
            f"output shape {verdict_shape}, expected {list(expected.output_shape)} ({expected.layout})",
            got_shape=verdict_shape,
            got_dtype=got.dtype.name,
        )
    if got.dtype != want_dtype:
        return Verdict(
            Outcome.SHAPE,
            f"output dtype {got.dtype.name}, expected {want_dtype.name}",
            got_shape=verdict_shape,
            got_dtype=got.dtype.name,
        )
    return _classify_values(expected, got)


# The spatial axes' letters by rank, as messages name them (the output's axis 1 is the first of them).
SPATIAL_AXES = {1: "W", 2: "HW", 3: "DHW"}


def _classify_no_output(expected: Expected, got: Any, raised: BaseException | None) -> Verdict:
    ndim = len(expected.output_shape)
    axes = ", ".join(SPATIAL_AXES[ndim - 2][a - 1] for a in expected.no_output_axes)
    if raised is not None:
        return Verdict(
            Outcome.EXPECTED_ERROR,
            f"raised {type(raised).__name__} (no valid output along {axes}): {first_line(raised)}",
        )
    got = np.asarray(got)
    shape = list(got.shape)
    if got.ndim == ndim and all(got.shape[a] == 0 for a in expected.no_output_axes):
        return Verdict(Outcome.EXPECTED_ERROR, f"returned an empty tensor of shape {shape}", got_shape=shape)
    if got.size == 0:
        return Verdict(
            Outcome.SHAPE,
            f"returned an empty tensor of shape {shape}; a conformant empty result is rank {ndim} with size 0 "
            f"along {axes}",
            got_shape=shape,
        )
    return Verdict(
        Outcome.MISSING_ERROR,
        f"returned a non-empty tensor of shape {shape} although the dilated kernel does not fit along {axes}: "
        "a conformant target raises or returns an empty tensor",
        got_shape=shape,
    )


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of representable values between a and b in their (common) format; +0 and -0 are equal."""
    return _ulps_between(_ordered_bits(a), _ordered_bits(b), wide=a.dtype.itemsize == 8)


def _ordered_bits(x: np.ndarray) -> np.ndarray:
    """A float format's bit patterns as int64, in the order of the values (+0 and -0 both 0)."""
    bits = x.dtype.itemsize * 8
    view = {16: np.int16, 32: np.int32, 64: np.int64}[bits]
    magnitude_mask = (1 << (bits - 1)) - 1
    raw = np.ascontiguousarray(x).view(view).astype(np.int64)
    signed: np.ndarray = np.where(raw < 0, -(raw & magnitude_mask), raw)
    return signed


def _ulps_between(a: np.ndarray, b: np.ndarray, *, wide: bool) -> np.ndarray:
    """|a - b| of ordered bits, as float64 (exact up to 2^53 ulps). Narrower formats' differences are
    exact in int64; so are a 64-bit format's of one sign, where float64 would round the bits
    themselves (about 2^62) to 1024s. Across zero its difference may pass int64's range: there it is
    |a| + |b| in float64, rounded (an answer that far off is wrong beyond what rounding blurs).
    `wide`: a 64-bit format."""
    difference = np.subtract(a, b)  # (wraps where a 64-bit format's values lie far apart across zero)
    distance: np.ndarray = np.abs(difference).astype(np.float64)
    if not wide:
        return distance
    across_zero = (a ^ b) < 0
    if across_zero.any():
        far = np.abs(a.astype(np.float64)) + np.abs(b.astype(np.float64))
        distance = np.where(across_zero, far, distance)
    return distance


def _classify_values(expected: Expected, got: np.ndarray) -> Verdict:
    ref = expected.values
    assert ref is not None and expected.abs_products is not None
    fmt = expected.model.fmt
    got64 = got.astype(np.float64)
    verdict = Verdict(Outcome.PASS, exact=expected.exact, got_shape=list(got.shape), got_dtype=_dtype_name(got.dtype))
    if (identical := _identical(expected, got64, verdict)) is not None:
        return identical
    judging = expected.judging
    if judging.plain and not expected.exact and (within := _within_bound(expected, judging, got, got64, verdict)):
        return within
    bound, ref_finite = judging.bound, judging.ref_finite

    got_finite = np.isfinite(got64)
    finite: np.ndarray | bool
    ulps = _answer_ulps(got, judging.ordered_ref)
    if judging.all_finite and got_finite.all():
        # Every value finite (nearly every check): the masks below would all be true. The same
        # figures from fewer passes and temporaries over tensors of up to millions of elements.
        special_bad = None
        finite = True
        error = np.abs(got64 - ref)
    else:
        # Non-finite values: NaN where the reference has NaN, the same infinity where it has one.
        # A finite reference within its bound of the format's overflow may come back as inf.
        may_overflow = ref_finite & (np.abs(ref) + bound >= fmt.max_finite)
        special_ok = np.where(
            np.isnan(ref),
            np.isnan(got64),
            np.where(
                ref_finite,
                got_finite | (may_overflow & (np.sign(got64) == np.sign(ref)) & ~np.isnan(got64)),
                got64 == ref,
            ),
        )
        special_bad = ~special_ok
        finite = ref_finite & got_finite
        error = np.zeros_like(ref)
        error[finite] = np.abs(got64[finite] - ref[finite])
        ulps = np.where(finite, ulps, 0.0)
    all_finite = finite is True
    if all_finite and judging.all_nonzero:  # (the masks would all be true, and no quotient divides by zero)
        relative = error / judging.abs_ref
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(finite & judging.ref_nonzero, error / judging.abs_ref, 0.0)
    ratio: np.ndarray | None = None  # (an exact check is judged on its error alone)
    worst_ratio = 0.0
    if not expected.exact and all_finite and judging.all_bounded:  # every ratio finite
        ratio = error / bound
        worst_ratio = float(ratio.max(initial=0.0))
        if not math.isfinite(worst_ratio):  # (a quotient that overflowed: the worst finite one is due)
            worst_ratio = _worst(ratio)
    elif not expected.exact:
        ratio = _ratio(error, bound, finite)
        worst_ratio = _worst(ratio)

    _set_figures(verdict, expected, error, relative, ulps, worst_ratio)

    if special_bad is not None and special_bad.any():
        index = tuple(int(i) for i in np.argwhere(special_bad)[0])
        verdict.outcome = Outcome.MISMATCH
        ratio = _ratio(error, bound, finite) if ratio is None else ratio
        verdict.error_map = error_map(
            np.where(special_bad, np.inf, ratio), "error/bound (inf: NaN/Inf differs)", expected.layout
        )
        verdict.worst = _element(index, ref, got64, bound[index])
        verdict.message = (
            f"{int(special_bad.sum())} element(s) differ in NaN/Inf: first at {list(index)} ({expected.index_names}): "
            f"expected {ref[index]!r}, got {got64[index]!r}"
        )
        return verdict
    judged = error if ratio is None else ratio
    worst_flat = int(np.argmax(judged)) if ref.size else 0
    index = tuple(int(i) for i in np.unravel_index(worst_flat, ref.shape)) if ref.size else ()
    if ref.size:
        verdict.worst = _element(index, ref, got64, bound[index])
    failing = judged > 0 if ratio is None else judged > 1.0
    if failing.any():
        verdict.outcome = Outcome.MISMATCH
        verdict.error_map = (
            error_map(error, "|error| (bit-exact required)", expected.layout)
            if ratio is None
            else error_map(ratio, layout=expected.layout)
        )
        rule = (
            f"bit-exact required: integer data whose every partial sum is exact in {fmt.name}"
            if expected.exact
            else expected.model.rule
        )
        ratio_text = "" if ratio is None else f", error/bound {ratio[index]:.3g}"
        verdict.message = (
            f"{int(failing.sum())} of {ref.size} elements beyond the bound; "
            f"worst at {list(index)} ({expected.index_names}): "
            f"expected {ref[index]!r}, got {got64[index]!r}, |error| {error[index]:.6g}, bound {bound[index]:.6g}"
            f"{ratio_text} ({rule})"
        )
        return verdict
    if expected.contract is not None and not expected.exact:
        _judge_contract(expected, verdict, ref, got64, error, finite)
    return verdict


def _within_bound(
    expected: Expected, judging: _Judging, got: np.ndarray, got64: np.ndarray, verdict: Verdict
) -> Verdict | None:
    """The verdict on an answer finite and within its bound at every element, where every element of
    the reference is plain (`_Judging.plain`), or None: the general path's figures from half its NumPy
    calls (a small output's judging is mostly their per-call cost, and nearly every check is
    this one). A NaN or Inf answer makes the worst ratio NaN or Inf, and falls to the general path."""
    ref = expected.values
    assert ref is not None
    error = np.abs(got64 - ref)
    ratio = error / judging.bound
    worst_flat = int(ratio.argmax())  # (the first NaN, where there is one)
    worst_ratio = float(ratio.item(worst_flat))
    if not worst_ratio <= 1.0:  # (NaN, Inf, or beyond the bound: the general path says which and where)
        return None
    _set_figures(verdict, expected, error, error / judging.abs_ref, _answer_ulps(got, judging.ordered_ref), worst_ratio)
    index = tuple(int(i) for i in np.unravel_index(worst_flat, ref.shape))
    verdict.worst = _element(index, ref, got64, judging.bound[index])
    if expected.contract is not None:
        _judge_contract(expected, verdict, ref, got64, error, True)
    return verdict


def classify_together(expected: Sequence[Expected], answers: Sequence[Any]) -> list[Verdict]:
    """`classify` of each (expected answer, answer) pair, with the same verdicts. Small answers of one
    shape and dtype, each against a plain reference (`_Judging.plain`) with no contract and no
    exactness due, are judged as one stacked array: for a small output a check's judging is mostly
    NumPy's per-call cost, which this pays once for the group (one target's draws of one geometry).
    Whatever that pass does not find within its bound at every element (NaN, Inf, beyond the bound)
    and every other pair is judged alone, by `classify`."""
    verdicts: list[Verdict | None] = [None] * len(expected)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (want, got) in enumerate(zip(expected, answers, strict=True)):
        if _stackable(want, got):
            groups.setdefault((got.shape, got.dtype), []).append(i)
    for rows in groups.values():
        if len(rows) > 1:
            judged = _within_bound_together([expected[i] for i in rows], [answers[i] for i in rows])
            for i, verdict in zip(rows, judged, strict=True):
                verdicts[i] = verdict
    return [classify(want, got) if v is None else v for want, got, v in zip(expected, answers, verdicts, strict=True)]


def _stackable(expected: Expected, got: Any) -> bool:
    """Whether a pair may be judged in a stack: a small output (a large one's judging costs its
    elements, not NumPy's calls, and a stack of them would hold several references at once)."""
    return (
        isinstance(got, np.ndarray)
        and expected.values is not None
        and expected.values.size <= KEEP_JUDGING_UP_TO
        and not expected.exact
        and expected.contract is None
        and got.shape == expected.output_shape
        and got.dtype == expected.model.fmt.numpy_dtype
        and expected.judging.plain
    )


@dataclass(frozen=True)
class _Stacked:
    """The references of a group and what judging derives from them, one row per expected answer."""

    members: tuple[Expected, ...]  # (held: the memo below compares them by identity)
    values: np.ndarray
    bound: np.ndarray
    abs_ref: np.ndarray
    ordered_ref: np.ndarray

    @classmethod
    def of(cls, expected: tuple[Expected, ...]) -> _Stacked:
        judgings = [e.judging for e in expected]
        rows = len(expected)
        return cls(
            members=expected,
            values=np.stack([e.values for e in expected]).reshape(rows, -1),  # type: ignore[misc]
            bound=np.stack([j.bound for j in judgings]).reshape(rows, -1),
            abs_ref=np.stack([j.abs_ref for j in judgings]).reshape(rows, -1),
            ordered_ref=np.stack([j.ordered_ref for j in judgings]).reshape(rows, -1),
        )


# The last groups' stacked references: a batch's targets are judged, one after another, against the
# same draws (their expected answers are shared: judging.expected_answer), and its equivalence
# oracles against the same primary outputs (judging.against_baseline): a stack of each.
_last_stacked: list[_Stacked] = []
KEEP_STACKS = 4


def _stacked(expected: list[Expected]) -> _Stacked:
    for kept in _last_stacked:
        if len(kept.members) == len(expected) and all(a is b for a, b in zip(kept.members, expected, strict=True)):
            return kept
    made = _Stacked.of(tuple(expected))
    _last_stacked[:] = [*_last_stacked[1 - KEEP_STACKS :], made]
    return made


def forget_stacked() -> None:
    """Let the last group's stacked references go (a process releasing its caches)."""
    _last_stacked.clear()


def _within_bound_together(expected: list[Expected], answers: list[np.ndarray]) -> list[Verdict | None]:
    """`_within_bound` of each row of stacked answers of one shape and dtype: its verdict where the
    answer is finite and within its bound at every element, else None (`classify` says why)."""
    stacked = _stacked(expected)
    rows = len(expected)
    shape = answers[0].shape
    got = np.stack(answers).reshape(rows, -1)
    got64 = got.astype(np.float64)
    error = np.abs(got64 - stacked.values)
    ratio = error / stacked.bound
    worst_flat = ratio.argmax(axis=1)  # (per row, the first NaN where there is one)
    every_row = np.arange(rows)
    # Each row's figures and worst element are read for all rows at once, as Python numbers: a row's
    # own NumPy scalar lookups cost more than its share of the arithmetic above.
    worst_ratio = ratio[every_row, worst_flat].tolist()
    max_abs = error.max(axis=1).tolist()
    max_rel = (error / stacked.abs_ref).max(axis=1).tolist()
    max_ulp = _answer_ulps(got, stacked.ordered_ref).max(axis=1).tolist()
    worst_index = np.stack(np.unravel_index(worst_flat, shape), axis=1).tolist()
    worst_ref = stacked.values[every_row, worst_flat].tolist()
    worst_got = got64[every_row, worst_flat].tolist()
    worst_bound = stacked.bound[every_row, worst_flat].tolist()
    got_dtype = _dtype_name(got.dtype)
    verdicts: list[Verdict | None] = []
    for row, want in enumerate(expected):
        ratio_here = worst_ratio[row]
        if not ratio_here <= 1.0:  # (NaN, Inf, or beyond the bound: the general path says which and where)
            verdicts.append(None)
            continue
        verdict = Verdict(Outcome.PASS, got_shape=list(shape), got_dtype=got_dtype)
        verdict.max_abs_error = max_abs[row]
        verdict.max_rel_error = max_rel[row]
        verdict.max_ulp = max_ulp[row]
        verdict.error_ratio = ratio_here
        verdict.bounds = {"dtype": _bound_facts(want.model, ratio_here)}
        verdict.worst = _worst_element(worst_index[row], worst_ref[row], worst_got[row], worst_bound[row])
        verdicts.append(verdict)
    return verdicts


def _answer_ulps(got: np.ndarray, ordered_ref: np.ndarray) -> np.ndarray:
    """Each element's distance from the reference rounded to the answer's format (`ordered_ref`: its
    ordered bits, `_Judging.ordered_ref`), in ulps."""
    return _ulps_between(_ordered_bits(got), ordered_ref, wide=got.dtype.itemsize == 8)


def _set_figures(
    verdict: Verdict,
    expected: Expected,
    error: np.ndarray,
    relative: np.ndarray,
    ulps: np.ndarray,
    worst_ratio: float,
) -> None:
    """A verdict's maxima (zeros stand where a value is not finite) and, unless the check is exact,
    its worst error/bound ratio."""
    verdict.max_abs_error = float(error.max(initial=0.0))
    verdict.max_rel_error = float(relative.max(initial=0.0))
    verdict.max_ulp = float(ulps.max(initial=0.0))
    verdict.error_ratio = None if expected.exact else worst_ratio
    if not expected.exact:
        verdict.bounds = {"dtype": _bound_facts(expected.model, worst_ratio)}


def _identical(expected: Expected, got64: np.ndarray, verdict: Verdict) -> Verdict | None:
    """The verdict on an answer equal to the reference at every element (NaN never is; a signed
    zero and an infinity equal to the reference's are), or None. Such an answer is common (the
    documents' integer-valued cases, float64 targets) and every figure of it is zero: one comparison
    instead of the dozen passes the general path makes over tensors of up to millions of elements."""
    ref = expected.values
    assert ref is not None and expected.abs_products is not None
    if not ref.size or got64.shape != ref.shape or not (got64 == ref).all():  # (np.array_equal, less its overhead)
        return None
    verdict.max_abs_error = verdict.max_rel_error = verdict.max_ulp = 0.0
    first = (0,) * ref.ndim  # (where the general path's argmax of all-zero errors points)
    # (the bound is elementwise: the general path's bound[first] computed alone)
    bound = 0.0 if expected.exact else expected.model.bound(ref[first], expected.abs_products[first])
    verdict.worst = _element(first, ref, got64, bound)
    if expected.exact:
        return verdict
    verdict.error_ratio = 0.0
    verdict.bounds = {"dtype": _bound_facts(expected.model, 0.0)}
    if expected.contract is not None:
        verdict.bounds["contract"] = {"id": expected.contract_id, **_bound_facts(expected.contract, 0.0)}
    return verdict


def _ratio(error: np.ndarray, bound: np.ndarray, finite: np.ndarray | bool) -> np.ndarray:
    """error / bound per element; inf where an error meets a zero bound, 0 where a value is non-finite
    (`finite`: where both values are finite, or True where all are)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio: np.ndarray = np.where(bound > 0, error / bound, np.where(error > 0, np.inf, 0.0))
    return ratio if finite is True else np.where(finite, ratio, 0.0)


def _worst(ratio: np.ndarray) -> float:
    finite_ratio = ratio[np.isfinite(ratio)]
    return float(finite_ratio.max(initial=0.0))


def _bound_facts(model: ErrorModel, worst_ratio: float) -> dict[str, Any]:
    facts: dict[str, Any] = {"kind": model.accumulation_gamma[1], "ratio": worst_ratio}
    if model.accumulation is not None:
        facts["accumulation"] = model.accumulation.name
    return facts


def _judge_contract(
    expected: Expected,
    verdict: Verdict,
    ref: np.ndarray,
    got64: np.ndarray,
    error: np.ndarray,
    finite: np.ndarray | bool,
) -> None:
    """Within the dtype's bound: now the framework's own contract. Its ratio becomes the check's
    error_ratio (the tighter bound is the one whose drift says something)."""
    contract = expected.contract
    assert contract is not None and expected.abs_products is not None and verdict.bounds is not None
    bound = contract.bound(ref, expected.abs_products)
    ratio = _ratio(error, bound, finite)
    verdict.error_ratio = _worst(ratio)
    verdict.bounds["contract"] = {"id": expected.contract_id, **_bound_facts(contract, verdict.error_ratio)}
    failing = ratio > 1.0
    if not failing.any():
        return
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(ratio)), ref.shape))
    verdict.outcome = Outcome.CONTRACT
    verdict.worst = _element(index, ref, got64, bound[index])
    verdict.error_map = error_map(ratio, "error/contract bound", expected.layout)
    verdict.message = (
        f"{int(failing.sum())} of {ref.size} elements beyond contract {expected.contract_id} "
        f"(within {contract.fmt.name}'s worst-case bound, ratio {verdict.bounds['dtype']['ratio']:.3g}); "
        f"worst at {list(index)} ({expected.index_names}): expected {ref[index]!r}, got {got64[index]!r}, "
        f"|error| {error[index]:.6g}, contract bound {bound[index]:.6g}, error/bound {ratio[index]:.3g} "
        f"({contract.rule})"
    )


def _element(index: tuple[int, ...], ref: np.ndarray, got: np.ndarray, bound_there: Any) -> dict[str, Any]:
    return _worst_element(list(index), ref[index], got[index], bound_there)


def _worst_element(index: list[int], expected: Any, got: Any, bound: Any) -> dict[str, Any]:
    """A verdict's `worst`: where, what was expected and got there, and the bound there."""
    return {"index": index, "expected": _json_float(expected), "got": _json_float(got), "bound": _json_float(bound)}


def _json_float(value: Any) -> float | str:
    """JSON has no NaN/Inf: keep them as the strings Python prints."""
    value = float(value)
    return value if math.isfinite(value) else repr(value)


@lru_cache(maxsize=32)
def _dtype_name(dtype: np.dtype[Any]) -> str:
    return dtype.name  # (computed in Python by NumPy on every access: a tenth of a verdict on a small output)
