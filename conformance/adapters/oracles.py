"""What the equivalence oracles share across frameworks: the kernel with inserted zeros, and when
an oracle applies at all. Each framework's module says how its own API runs them.

- zero-inserted: rate 1 with a kernel whose taps are spread out by explicit zeros. That is how the
  reference documents define atrous convolution, and a path through the framework that never sees
  a dilation argument.
- explicit-pads: SAME written out as the pads of DESIGN.md, which `conformance.semantics` computes.
- another layout (NCHW, channels_last): the same call through another kernel family.
- transposed as forward: a transposed convolution is a forward one (rate r, stride 1) of the input
  with s - 1 zeros inserted between its pixels, padded by k_eff - 1 - crop, with the kernel flipped
  in space and its in/out channels swapped per group.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conformance import cost
from conformance.adapters.base import Adapter, CallParams, CallWrapper, ConvCall, FrameworkCall, Unsupported
from conformance.adapters.program import Expr, Import, Name, Statement, invoke
from conformance.dtypes import float_format

ZERO_INSERTED = "zero-inserted"
EXPLICIT_PADS = "explicit-pads"


def zero_inserted_kernel(w: np.ndarray, rate: tuple[int, ...], storage: str = "float64") -> np.ndarray:
    """The (*spatial, I, O) kernel with rate-1 zeros between taps: an ordinary (rate 1) convolution
    with it is the dilated convolution. `storage`: the NumPy float it is made in; float32 holds every
    value of a float32, float16 or bfloat16 case exactly, at half float64's size (the spread kernel
    is the largest tensor of a large-rate check)."""
    taps = w.shape[: len(rate)]
    span = tuple((k - 1) * r + 1 for k, r in zip(taps, rate, strict=True))
    dilated = np.zeros((*span, *w.shape[len(rate) :]), dtype=storage)
    dilated[tuple(slice(None, None, r) for r in rate)] = w
    return dilated


def stride_dilated_input(x: np.ndarray, stride: tuple[int, ...]) -> np.ndarray:
    """Channels-last x with stride - 1 zeros between its pixels along each spatial axis."""
    n, *spatial, c = x.shape
    spread = np.zeros((n, *((i - 1) * s + 1 for i, s in zip(spatial, stride, strict=True)), c), dtype=x.dtype)
    spread[(slice(None), *(slice(None, None, s) for s in stride))] = x
    return spread


def adjoint_kernel(w: np.ndarray, groups: int) -> np.ndarray:
    """The forward op's kernel (*spatial, C_out / g, C_in) as the kernel (*spatial, C_in / g, C_out)
    of the forward convolution that computes its transpose: flipped in space, in and out channels
    swapped within each group."""
    *taps, out_per_group, c_in = w.shape
    rank = len(taps)
    flipped = w[tuple(slice(None, None, -1) for _ in taps)]
    grouped = flipped.reshape(*taps, out_per_group, groups, c_in // groups)
    swapped = grouped.transpose(*range(rank), rank + 2, rank + 1, rank)
    return np.ascontiguousarray(swapped.reshape(*taps, c_in // groups, groups * out_per_group))


def require_finite_for_zero_insertion(call: ConvCall) -> None:
    """inf * an inserted zero is NaN where the dilated convolution never multiplies them: such data
    cannot tell the two formulations apart, so the oracle does not apply."""
    if not (np.isfinite(call.x.astype(np.float64)).all() and np.isfinite(call.w.astype(np.float64)).all()):
        raise Unsupported(
            "non-finite data: inf * an inserted zero is NaN where the dilated convolution never multiplies them"
        )


def explicit_pads_reason(params: CallParams) -> str | None:
    """The explicit-pads oracle checks a framework's SAME; other paddings are explicit already."""
    return None if params.padding == "SAME" else "the SAME-equals-explicit-pads oracle applies to SAME cases only"


# The oracles themselves: wrappers over a framework's call (its primary, which is their baseline) that
# change one thing of the contract. How each API says "rate 1" or "these pads" stays in its module.


class ZeroInserted(CallWrapper):
    """Rate 1 with the kernel's taps spread out by explicit zeros."""

    def __init__(self, primary: FrameworkCall) -> None:
        super().__init__(primary, ZERO_INSERTED)
        self.baseline = primary

    def memory_estimate(self, call_params: CallParams) -> list[cost.Part]:
        # The spread kernel is (k - 1) * r + 1 taps a side: at rate 24 a 3 x 3 kernel of 2,048 x 256
        # channels becomes 49 x 49, 9.4 GiB in float64. Where the zeros are made does not change that
        # much (the lowering of a 49 x 49 kernel dominates): the budget decides, and says so.
        storage = float_format(spread_kernel_storage(call_params.dtype)).numpy_dtype.itemsize
        return cost.zero_inserted_call(cost.Shapes.of(call_params), storage)

    def refuse(self, call: ConvCall) -> None:
        require_finite_for_zero_insertion(call)
        self.inner.refuse(call)

    def kernel_imports(self, call: ConvCall) -> list[Statement]:
        return [Import("conformance.adapters.oracles", names=("zero_inserted_kernel",))]

    def kernel(self, call: ConvCall) -> Expr:
        return invoke("zero_inserted_kernel", Name("w"), call.rate, spread_kernel_storage(call.dtype))

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return self.inner.invocation(replace(call, rate=(1,) * len(call.rate)), precision)


def spread_kernel_storage(dtype: str) -> str:
    """The narrowest NumPy float every framework takes that holds the case dtype's values exactly."""
    return "float64" if dtype == "float64" else "float32"


class ExplicitPads(CallWrapper):
    """SAME written out as the explicit pads of DESIGN.md, in the API's own spelling of explicit pads."""

    def __init__(self, primary: FrameworkCall) -> None:
        super().__init__(primary, EXPLICIT_PADS)
        self.baseline = primary

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return explicit_pads_reason(call_params) or super().unsupported_reason(call_params)

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return self.inner.invocation(replace(call, padding=call.geometry.pads), precision)


class Against(CallWrapper):
    """The same call judged against another formulation of the framework's (`baseline`), not the
    reference: e.g. `atrous_conv2d` must equal `conv2d(dilations=)`, whatever the reference says."""

    def __init__(self, inner: FrameworkCall, baseline: Adapter, variant: str) -> None:
        super().__init__(inner, variant)
        self.baseline = baseline
