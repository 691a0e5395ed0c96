"""A second NumPy implementation, by a different algorithm from the reference, run as a target.

The reference accumulates one strided view per kernel tap in float64. This target builds all
dilated windows at once (im2col through `sliding_window_view`) and contracts them in the case
dtype, the way a framework would (float16 and bfloat16 accumulate in float32). Agreement between
the two cross-checks the reference; the document cases check both against published values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from conformance.adapters.base import ConvCall, DescribedAdapter
from conformance.adapters.modes import numpy_output
from conformance.adapters.program import Assign, Import, Name, Program, invoke
from conformance.dtypes import float_format
from conformance.frameworks import NUMPY
from conformance.semantics import PadPairs, effective_kernel_size


@np.errstate(invalid="ignore", over="ignore")  # special-value cases: Inf, NaN and overflow are the answer
def conv2d_im2col(
    x: np.ndarray,
    w: np.ndarray,
    *,
    dtype: str,
    rate: tuple[int, int],
    stride: tuple[int, int],
    pads: PadPairs,
    groups: int,
) -> np.ndarray:
    """NHWC x HWIO -> NHWC in `dtype`: the inputs rounded to `dtype`, every window gathered, one
    contraction in float32 (float64 for float64). Raises ValueError when the dilated kernel does
    not fit (the conformant "error" answer)."""
    out_dtype = float_format(dtype).numpy_dtype
    compute = np.float64 if dtype == "float64" else np.float32
    x, w = x.astype(out_dtype).astype(compute), w.astype(out_dtype).astype(compute)
    (top, bottom), (left, right) = pads
    x_pad = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    k_h, k_w, c_per_group, c_out = w.shape
    (r_h, r_w), (s_h, s_w) = rate, stride
    span = (effective_kernel_size(k_h, r_h), effective_kernel_size(k_w, r_w))
    windows = sliding_window_view(x_pad, span, axis=(1, 2))[:, ::s_h, ::s_w, :, ::r_h, ::r_w]
    n, o_h, o_w = windows.shape[:3]
    windows = windows.reshape(n, o_h, o_w, groups, c_per_group, k_h, k_w)
    kernel = w.reshape(k_h, k_w, c_per_group, groups, c_out // groups)
    y: np.ndarray = np.einsum("nhwgcuv,uvcgo->nhwgo", windows, kernel, optimize=True)
    return y.reshape(n, o_h, o_w, c_out).astype(out_dtype)


class NumpyIm2col(DescribedAdapter):
    framework = NUMPY
    op = "im2col"
    devices = ("cpu",)

    def check_available(self, device: str) -> None:
        return None

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        im2col = invoke(
            "conv2d_im2col", Name("x"), Name("w"), dtype=call.dtype, rate=call.rate, stride=call.stride,
            pads=call.geometry.pads, groups=call.groups,
        )  # fmt: skip
        return Program((Import("conformance.adapters.numpy", names=("conv2d_im2col",)), Assign("y", im2col)))

    def to_numpy(self, value: Any) -> np.ndarray:
        return numpy_output(value, value.dtype.name)

    def environment(self) -> dict[str, Any]:
        return {"version": np.__version__, "devices": ["cpu"]}


ADAPTERS = (NumpyIm2col(),)
