"""JAX: `jax.lax.conv_general_dilated` with NHWC/HWIO dimension numbers.

float64 needs `jax_enable_x64`, which is process-wide and must be set before arrays exist, so
the adapter sets it when it first loads JAX. strict mode passes precision=HIGHEST (no TF32 or
bf16 passes on GPU); defaults mode passes None, what a user gets without asking.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from conformance.adapters.base import Adapter, ConvCall, Unavailable
from conformance.dtypes import float_format

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


@cache
def _jax() -> Any:
    try:
        import jax
    except ImportError as exc:
        raise Unavailable(f"JAX is not installed ({exc})") from None
    jax.config.update("jax_enable_x64", True)
    return jax


def _device(device: str) -> Any:
    jax = _jax()
    try:
        return jax.devices("gpu" if device == "gpu" else "cpu")[0]
    except RuntimeError as exc:
        raise Unavailable(f"no {device.upper()} backend in jax {jax.__version__}: {str(exc).splitlines()[0]}") from None


def _padding_argument(call: ConvCall) -> str | list[tuple[int, int]]:
    if call.padding in ("SAME", "VALID"):
        return str(call.padding)
    return [tuple(p) for p in call.geometry.pads]  # type: ignore[misc]


class JaxConvGeneralDilated(Adapter):
    framework = "jax"
    distributions = ("jax",)
    op = "conv_general_dilated"

    def check_available(self, device: str) -> None:
        _device(device)

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        jax = _jax()
        dtype = getattr(jax.numpy, call.dtype)
        where = _device(device)
        x = jax.device_put(call.x.astype(np.float64), where).astype(dtype)
        w = jax.device_put(call.w.astype(np.float64), where).astype(dtype)
        y = jax.lax.conv_general_dilated(
            x,
            w,
            window_strides=call.stride,
            padding=_padding_argument(call),
            rhs_dilation=call.rate,
            dimension_numbers=DIMENSION_NUMBERS,
            feature_group_count=call.groups,
            precision=jax.lax.Precision.HIGHEST if precision == "strict" else None,
        )
        out = np.asarray(y)
        return out.astype(float_format(out.dtype.name).numpy_dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        precision_arg = "jax.lax.Precision.HIGHEST" if precision == "strict" else "None"
        return "\n".join(
            [
                "import jax, jax.numpy as jnp",
                "jax.config.update('jax_enable_x64', True)",
                f"dev = jax.devices('{device}')[0]",
                f"x_j = jax.device_put(jnp.asarray(x, jnp.float64), dev).astype(jnp.{call.dtype})  # NHWC",
                f"w_j = jax.device_put(jnp.asarray(w, jnp.float64), dev).astype(jnp.{call.dtype})  # HWIO",
                f"y = jax.lax.conv_general_dilated(x_j, w_j, window_strides={call.stride}, "
                f"padding={_padding_argument(call)!r}, rhs_dilation={call.rate}, "
                f"dimension_numbers={DIMENSION_NUMBERS}, feature_group_count={call.groups}, "
                f"precision={precision_arg})",
            ]
        )

    def environment(self) -> dict[str, Any]:
        jax = _jax()
        import jaxlib

        devices = [f"{d.platform}: {getattr(d, 'device_kind', d)}" for d in jax.devices()]
        return {
            "version": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(),
            "devices": devices,
            "flags": {
                "jax_enable_x64": bool(jax.config.jax_enable_x64),
                "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
            },
        }


ADAPTERS = (JaxConvGeneralDilated(),)
