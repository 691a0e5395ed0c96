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

from conformance.adapters.base import Adapter, ConvCall, pads_text
from conformance.dtypes import float_format


class NumpyIm2col(Adapter):
    framework = "numpy"
    distributions = ("numpy",)
    op = "im2col"
    devices = ("cpu",)

    def check_available(self, device: str) -> None:
        return None

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        out_dtype = float_format(call.dtype).numpy_dtype
        compute = np.float64 if call.dtype == "float64" else np.float32
        x, w = call.x.astype(compute), call.w.astype(compute)
        (top, bottom), (left, right) = call.geometry.pads
        x_pad = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        k_h, k_w, c_per_group, c_out = w.shape
        (r_h, r_w), (s_h, s_w) = call.rate, call.stride
        span = call.geometry.effective_kernel_hw
        # Raises ValueError when the dilated kernel does not fit: the conformant "error" answer.
        windows = sliding_window_view(x_pad, span, axis=(1, 2))[:, ::s_h, ::s_w, :, ::r_h, ::r_w]
        n, o_h, o_w = windows.shape[:3]
        g = call.groups
        windows = windows.reshape(n, o_h, o_w, g, c_per_group, k_h, k_w)
        kernel = w.reshape(k_h, k_w, c_per_group, g, c_out // g)
        y = np.einsum("nhwgcuv,uvcgo->nhwgo", windows, kernel, optimize=True)
        return y.reshape(n, o_h, o_w, c_out).astype(out_dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return (
            "from conformance import reference\n"
            f"y = reference.conv2d(x, w, rate={call.rate}, stride={call.stride}, "
            f"padding={pads_text(call.geometry)}, groups={call.groups})"
        )

    def environment(self) -> dict[str, Any]:
        return {"version": np.__version__, "devices": ["cpu"]}


ADAPTERS = (NumpyIm2col(),)
