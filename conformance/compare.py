"""Outcome classification and the per-element error bound (DESIGN.md sections 3 and 4).

The bound for one output element of a dot product of length n in a format with unit
roundoff u (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5):

    |y_hat - y| <= gamma_n(u) * S + u * |y| + n * eta + gamma_n(2**-53) * S

with S = sum |x||w| over the element's window (computed exactly like the reference, on
absolute values), gamma_n(u) = n*u / (1 - n*u), u*|y| for rounding the result into the
output format, n*eta for products that underflow (eta: the format's smallest normal, which
also covers flush-to-zero), and the last term for the float64 reference's own rounding.
Exact-integer data whose every partial sum is representable must match bit for bit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from conformance.dtypes import TF32_PRECISION_BITS, FloatFormat

FLOAT64_UNIT_ROUNDOFF = 2.0**-53


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
    XFAIL = "xfail"
    XPASS = "xpass"


CONFORMANT = frozenset({Outcome.PASS, Outcome.EXPECTED_ERROR})
NOT_RUN = frozenset({Outcome.UNSUPPORTED, Outcome.SKIP})


def gamma(n: int, u: float) -> float:
    """gamma_n = n*u / (1 - n*u); infinite once n*u >= 1 (no meaningful bound is left)."""
    nu = n * u
    return nu / (1.0 - nu) if nu < 1.0 else float("inf")


@dataclass(frozen=True)
class ErrorModel:
    """How much error a conformant target may make, for one (case, dtype, precision mode)."""

    fmt: FloatFormat
    accumulation_length: int  # n = k_h * k_w * C_in / groups
    tf32: bool = False  # float32 products whose inputs are first rounded to TF32
    scale: float = 1.0  # 2 when two computations, each within the bound, are compared with each other

    @property
    def unit_roundoff(self) -> float:
        if self.tf32:
            return 2.0**-TF32_PRECISION_BITS
        return self.fmt.unit_roundoff

    @property
    def rounding_steps(self) -> int:
        # TF32 rounds each product's two inputs before an exact product: two more roundings.
        return self.accumulation_length + (2 if self.tf32 else 0)

    @np.errstate(over="ignore", invalid="ignore")  # an Inf product makes the bound Inf there: no bound is due
    def bound(self, reference: np.ndarray, abs_products: np.ndarray) -> np.ndarray:
        u = self.unit_roundoff
        n = self.accumulation_length
        bound: np.ndarray = self.scale * (
            gamma(self.rounding_steps, u) * abs_products
            + u * np.abs(reference)
            + n * self.fmt.smallest_normal
            + gamma(n, FLOAT64_UNIT_ROUNDOFF) * abs_products
        )
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

    @property
    def index_names(self) -> str:
        return ", ".join(self.layout.lower())


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


def _classify_no_output(expected: Expected, got: Any, raised: BaseException | None) -> Verdict:
    axes = ", ".join("HW"[a - 1] for a in expected.no_output_axes)
    if raised is not None:
        return Verdict(
            Outcome.EXPECTED_ERROR,
            f"raised {type(raised).__name__} (no valid output along {axes}): {first_line(raised)}",
        )
    got = np.asarray(got)
    shape = list(got.shape)
    if got.ndim == 4 and all(got.shape[a] == 0 for a in expected.no_output_axes):
        return Verdict(Outcome.EXPECTED_ERROR, f"returned an empty tensor of shape {shape}", got_shape=shape)
    if got.size == 0:
        return Verdict(
            Outcome.SHAPE,
            f"returned an empty tensor of shape {shape}; a conformant empty result is rank 4 with size 0 along {axes}",
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
    bits = a.dtype.itemsize * 8
    view = {16: np.int16, 32: np.int32, 64: np.int64}[bits]
    magnitude_mask = (1 << (bits - 1)) - 1

    def ordered(x: np.ndarray) -> np.ndarray:
        raw = np.ascontiguousarray(x).view(view).astype(np.int64)
        return np.where(raw < 0, -(raw & magnitude_mask), raw).astype(np.float64)

    distance: np.ndarray = np.abs(ordered(a) - ordered(b))
    return distance


def _classify_values(expected: Expected, got: np.ndarray) -> Verdict:
    ref = expected.values
    assert ref is not None and expected.abs_products is not None
    fmt = expected.model.fmt
    got64 = got.astype(np.float64)
    with np.errstate(over="ignore"):  # a reference beyond the format's range rounds to inf
        ref_in_format = ref.astype(fmt.numpy_dtype)
    verdict = Verdict(Outcome.PASS, exact=expected.exact, got_shape=list(got.shape), got_dtype=got.dtype.name)

    bound = np.zeros_like(ref) if expected.exact else expected.model.bound(ref, expected.abs_products)
    # Non-finite values: NaN where the reference has NaN, the same infinity where it has one.
    # A finite reference within its bound of the format's overflow may come back as inf.
    ref_finite, got_finite = np.isfinite(ref), np.isfinite(got64)
    may_overflow = ref_finite & (np.abs(ref) + bound >= fmt.max_finite)
    special_ok = np.where(
        np.isnan(ref),
        np.isnan(got64),
        np.where(
            ref_finite, got_finite | (may_overflow & (np.sign(got64) == np.sign(ref)) & ~np.isnan(got64)), got64 == ref
        ),
    )
    special_bad = ~special_ok
    finite = ref_finite & got_finite

    error = np.zeros_like(ref)
    error[finite] = np.abs(got64[finite] - ref[finite])
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(finite & (ref != 0), error / np.abs(ref), 0.0)
        ratio = np.where(finite, np.where(bound > 0, error / bound, np.where(error > 0, np.inf, 0.0)), 0.0)
    ulps = np.where(finite, ulp_distance(got, ref_in_format), 0.0)

    verdict.max_abs_error = float(error.max(initial=0.0))
    verdict.max_rel_error = float(relative.max(initial=0.0))
    verdict.max_ulp = float(ulps.max(initial=0.0))
    finite_ratio = ratio[np.isfinite(ratio)]
    verdict.error_ratio = None if expected.exact else float(finite_ratio.max(initial=0.0))

    if special_bad.any():
        index = tuple(int(i) for i in np.argwhere(special_bad)[0])
        verdict.outcome = Outcome.MISMATCH
        verdict.error_map = error_map(
            np.where(special_bad, np.inf, ratio), "error/bound (inf: NaN/Inf differs)", expected.layout
        )
        verdict.worst = _element(index, ref, got64, bound)
        verdict.message = (
            f"{int(special_bad.sum())} element(s) differ in NaN/Inf: first at {list(index)} ({expected.index_names}): "
            f"expected {ref[index]!r}, got {got64[index]!r}"
        )
        return verdict
    worst_flat = int(np.argmax(error if expected.exact else ratio)) if ref.size else 0
    index = tuple(int(i) for i in np.unravel_index(worst_flat, ref.shape)) if ref.size else ()
    if ref.size:
        verdict.worst = _element(index, ref, got64, bound)
    failing = error > 0 if expected.exact else ratio > 1.0
    if failing.any():
        verdict.outcome = Outcome.MISMATCH
        verdict.error_map = (
            error_map(error, "|error| (bit-exact required)", expected.layout)
            if expected.exact
            else error_map(ratio, layout=expected.layout)
        )
        model = expected.model
        rule = (
            f"bit-exact required: integer data whose every partial sum is exact in {fmt.name}"
            if expected.exact
            else f"bound: gamma_{model.rounding_steps}(u={model.unit_roundoff:.3g}) * sum|x||w| + u|y| + ..."
        )
        ratio_text = "" if expected.exact else f", error/bound {ratio[index]:.3g}"
        verdict.message = (
            f"{int(failing.sum())} of {ref.size} elements beyond the bound; "
            f"worst at {list(index)} ({expected.index_names}): "
            f"expected {ref[index]!r}, got {got64[index]!r}, |error| {error[index]:.6g}, bound {bound[index]:.6g}"
            f"{ratio_text} ({rule})"
        )
    return verdict


ERROR_MAP_MAX_SIDE = 48  # cells per side: enough to see a border or a stripe, small enough for 20k-row reports


def error_map(per_element: np.ndarray, quantity: str = "error/bound", layout: str = "NHWC") -> dict[str, Any]:
    """Max over the non-spatial axes (batch and channels; both channel axes of a kernel), then
    max-pooled to at most 48x48 cells over (H, W).

    Max, not mean, at both steps: one bad pixel must stay visible after downsampling.
    Non-finite cells (a NaN/Inf mismatch, or an error where the bound is zero) become null.
    """
    channel_axes = (2, 3) if layout == "HWIO" else (0, 3)
    plane = per_element.max(axis=channel_axes) if per_element.size else np.zeros((0, 0))
    height, width = plane.shape
    block = (max(1, -(-height // ERROR_MAP_MAX_SIDE)), max(1, -(-width // ERROR_MAP_MAX_SIDE)))
    rows, cols = -(-height // block[0]), -(-width // block[1])
    padded = np.full((rows * block[0], cols * block[1]), -np.inf)
    padded[:height, :width] = plane
    pooled = padded.reshape(rows, block[0], cols, block[1]).max(axis=(1, 3))
    values = [[float(f"{v:.3g}") if np.isfinite(v) else None for v in row] for row in pooled]
    return {"quantity": quantity, "hw": [height, width], "block": list(block), "values": values}


def _element(index: tuple[int, ...], ref: np.ndarray, got: np.ndarray, bound: np.ndarray) -> dict[str, Any]:
    return {
        "index": list(index),
        "expected": _json_float(ref[index]),
        "got": _json_float(got[index]),
        "bound": _json_float(bound[index]),
    }


def _json_float(value: Any) -> float | str:
    """JSON has no NaN/Inf: keep them as the strings Python prints."""
    value = float(value)
    return value if np.isfinite(value) else repr(value)


_ANSI_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")
# Keras wraps a backend's error in a line that names only the layer; the backend's words come next.
_GRAPH_ERROR = "Graph execution error:"
_KERAS_WRAPPER = "Exception encountered when calling"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (messages of native errors run to pages)."""
    lines = [line.strip() for line in _ANSI_ESCAPES.sub("", str(exc)).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith(_KERAS_WRAPPER):
        lines = [f"{lines[0]} {lines[1]}"]
    if lines and lines[0] == _GRAPH_ERROR:
        # TensorFlow's graph errors list the Python frames that built the node, then the message.
        message = [line for line in lines[1:] if not line.startswith(("Detected at node", "File "))]
        lines = [f"{lines[0]} {message[0]}" if message else lines[0]]
    return lines[0][:500] if lines else "(no message)"


def exception_text(exc: BaseException) -> str:
    """`TypeName: first line`, the way records name an exception."""
    return f"{type(exc).__name__}: {first_line(exc)}"
