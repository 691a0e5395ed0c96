"""A second NumPy implementation, by a different algorithm from the reference, run as a target.

The reference accumulates one strided view per kernel tap in float64. This target builds all
dilated windows at once (im2col through `sliding_window_view`) and contracts them in the case
dtype, the way a framework would (float16 and bfloat16 accumulate in float32). Agreement between
the two cross-checks the reference; the document cases check both against published values.
It takes the case's float64 tensors as they are (`tensors` binds them) and rounds inside.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from conformance.adapters.base import ConvCall, FrameworkCall
from conformance.adapters.modes import numpy_output
from conformance.adapters.program import Assign, Expr, Import, Name, Statement, invoke
from conformance.dtypes import float_format
from conformance.frameworks import NUMPY
from conformance.semantics import PadPairs, effective_kernel_size

# einsum letters of the spatial axes and of the kernel taps along them, for 1 to 3 spatial axes.
_OUTPUT_AXES, _TAP_AXES = "dhw", "tuv"


@np.errstate(invalid="ignore", over="ignore")  # special-value cases: Inf, NaN and overflow are the answer
def conv_im2col(
    x: np.ndarray,
    w: np.ndarray,
    *,
    dtype: str,
    rate: tuple[int, ...],
    stride: tuple[int, ...],
    pads: PadPairs,
    groups: int,
) -> np.ndarray:
    """(N, *spatial, C) x (*spatial, C_in / g, C_out) -> (N, *spatial, C_out) in `dtype`: the inputs
    rounded to `dtype`, every window gathered, one contraction in float32 (float64 for float64).
    Raises ValueError when the dilated kernel does not fit (the conformant "error" answer)."""
    rank = len(rate)
    out_dtype = float_format(dtype).numpy_dtype
    compute = np.float64 if dtype == "float64" else np.float32
    x, w = x.astype(out_dtype).astype(compute), w.astype(out_dtype).astype(compute)
    x_pad = np.pad(x, ((0, 0), *pads, (0, 0)))
    *taps, c_per_group, c_out = w.shape
    span = tuple(effective_kernel_size(k, r) for k, r in zip(taps, rate, strict=True))
    windows = sliding_window_view(x_pad, span, axis=tuple(range(1, rank + 1)))
    strided = (slice(None), *(slice(None, None, s) for s in stride), slice(None), *(slice(None, None, r) for r in rate))
    windows = windows[strided]
    n, *out = windows.shape[: rank + 1]
    windows = windows.reshape(n, *out, groups, c_per_group, *taps)
    kernel = w.reshape(*taps, c_per_group, groups, c_out // groups)
    space, taps_of = _OUTPUT_AXES[3 - rank :], _TAP_AXES[3 - rank :]
    y: np.ndarray = np.einsum(f"n{space}gc{taps_of},{taps_of}cgo->n{space}go", windows, kernel, optimize=True)
    return y.reshape(n, *out, c_out).astype(out_dtype)


class NumpyIm2col(FrameworkCall):
    framework = NUMPY
    op = "im2col"
    ranks = (1, 2, 3)
    devices = ("cpu",)

    def check_available(self, device: str) -> None:
        return None

    def prelude(self, device: str, precision: str) -> list[Statement]:
        return [Import("conformance.adapters.numpy", names=("conv_im2col",))]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        return [Assign("x_t", Name("x")), Assign("w_t", kernel)]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return invoke(
            "conv_im2col", Name("x_t"), Name("w_t"), dtype=call.dtype, rate=call.rate, stride=call.stride,
            pads=call.geometry.pads, groups=call.groups,
        )  # fmt: skip

    def to_numpy(self, value: Any) -> np.ndarray:
        return numpy_output(value, value.dtype.name)

    def environment(self) -> dict[str, Any]:
        return {"version": np.__version__, "devices": ["cpu"]}


ADAPTERS = (NumpyIm2col(),)
