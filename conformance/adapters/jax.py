"""JAX: `jax.lax.conv_general_dilated` with NHWC/HWIO dimension numbers.

float64 needs `jax_enable_x64`, which is process-wide and must be set before arrays exist, so
the adapter sets it when it first loads JAX. strict mode passes precision=HIGHEST (no TF32 or
bf16 passes on GPU); defaults mode passes None, what a user gets without asking.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

from conformance.adapters.base import (
    INSERTED_ZEROS,
    QUANTITIES,
    Adapter,
    CallParams,
    ConvCall,
    DerivativeAdapter,
    DeviceComparison,
    Unavailable,
    require_finite,
    zero_inserted_kernel,
)
from conformance.dtypes import float_format

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
COMPILATION_CACHE_VARIABLE = "CONFORMANCE_JAX_CACHE_DIR"  # set by the plugin for a run's xdist workers


@cache
def _jax() -> Any:
    try:
        import jax
    except ImportError as exc:
        raise Unavailable(f"JAX is not installed ({exc})") from None
    jax.config.update("jax_enable_x64", True)
    shared = os.environ.get(COMPILATION_CACHE_VARIABLE)
    if shared:
        # Workers of one run share compiled executables: a configuration one worker compiled is
        # loaded by another, as in one process. The key holds the HLO, the options and the jaxlib
        # version; the directory lives and dies with the run.
        jax.config.update("jax_compilation_cache_dir", shared)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
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


def _keywords_source(arguments: dict[str, Any]) -> str:
    """Keyword arguments as source; `precision` already holds its source text."""
    return ", ".join(f"{k}={v!r}" if k != "precision" else f"{k}={v}" for k, v in arguments.items())


class JaxConvGeneralDilated(Adapter):
    framework = "jax"
    distributions = ("jax",)
    op = "conv_general_dilated"

    def __init__(self, variant: str = "") -> None:
        self.variant = variant

    def check_available(self, device: str) -> None:
        _device(device)

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        jax = _jax()
        where = _device(device)
        # The arrays are already in the case dtype (ml_dtypes for bfloat16): no cast op to compile.
        x = jax.device_put(self._layout_input(call.x), where)
        w = jax.device_put(self._layout_kernel(self._kernel(call)), where)
        arguments = self._arguments(call, precision)
        convolve = jax.lax.conv_general_dilated
        if self.variant == "jit":
            convolve = jax.jit(convolve, static_argnames=tuple(arguments))
        out = self._layout_output(np.asarray(self._convolve(jax, convolve, x, w, arguments)))
        return out.astype(float_format(out.dtype.name).numpy_dtype)

    def _kernel(self, call: ConvCall) -> np.ndarray:
        return call.w

    # Layout changes happen in NumPy, so that only the convolution itself is compiled.
    def _layout_input(self, x: np.ndarray) -> np.ndarray:
        return x

    def _layout_kernel(self, w: np.ndarray) -> np.ndarray:
        return w

    def _layout_output(self, y: np.ndarray) -> np.ndarray:
        return y

    def _arguments(self, call: ConvCall, precision: str) -> dict[str, Any]:
        jax = _jax()
        return {
            "window_strides": call.stride,
            "padding": _padding_argument(call),
            "rhs_dilation": call.rate,
            "dimension_numbers": DIMENSION_NUMBERS,
            "feature_group_count": call.groups,
            "precision": jax.lax.Precision.HIGHEST if precision == "strict" else None,
        }

    def _convolve(self, jax: Any, convolve: Any, x: Any, w: Any, arguments: dict[str, Any]) -> Any:
        if isinstance(arguments["padding"], list):  # jit's static arguments must be hashable
            arguments = {**arguments, "padding": tuple(arguments["padding"])}
        return convolve(x, w, **arguments)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        arguments = self._arguments(call, precision)
        arguments["precision"] = "jax.lax.Precision.HIGHEST" if precision == "strict" else "None"
        conv = None
        if self.variant == "jit":  # static arguments must be hashable
            arguments["padding"] = (
                tuple(arguments["padding"]) if isinstance(arguments["padding"], list) else arguments["padding"]
            )
            conv = f"jax.jit(jax.lax.conv_general_dilated, static_argnames={tuple(arguments)!r})"
        text = _keywords_source(arguments)
        return "\n".join(
            [
                "import jax, jax.numpy as jnp",
                "jax.config.update('jax_enable_x64', True)",
                f"dev = jax.devices('{device}')[0]",
                f"x_j = jax.device_put(jnp.asarray(x, jnp.float64), dev).astype(jnp.{call.dtype})  # NHWC",
                f"w_j = jax.device_put(jnp.asarray(w, jnp.float64), dev).astype(jnp.{call.dtype})  # HWIO",
                *self._prelude(call),
                f"y = {self._source_call(conv or 'jax.lax.conv_general_dilated', text)}",
            ]
        )

    def _prelude(self, call: ConvCall) -> list[str]:
        return []

    def _source_call(self, conv: str, arguments: str) -> str:
        return f"{conv}(x_j, w_j, {arguments})"

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
                "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
            },
        }


PRIMARY = JaxConvGeneralDilated()


class JaxZeroInserted(JaxConvGeneralDilated):
    """Oracle: rhs_dilation 1 with the kernel's taps spread out by explicit zeros."""

    baseline = PRIMARY

    def __init__(self) -> None:
        super().__init__("zero-inserted")

    def _kernel(self, call: ConvCall) -> np.ndarray:
        require_finite(call, INSERTED_ZEROS)
        return zero_inserted_kernel(call.w, call.rate)

    def _arguments(self, call: ConvCall, precision: str) -> dict[str, Any]:
        return {**super()._arguments(call, precision), "rhs_dilation": (1, 1)}

    def _prelude(self, call: ConvCall) -> list[str]:
        return [
            "from conformance.adapters.base import zero_inserted_kernel",
            f"w_j = jax.device_put(jnp.asarray(zero_inserted_kernel(w, {call.rate}), jnp.float64), dev)"
            f".astype(jnp.{call.dtype})",
        ]


class JaxExplicitPads(JaxConvGeneralDilated):
    """Oracle: SAME written out as the explicit pads of DESIGN.md."""

    baseline = PRIMARY

    def __init__(self) -> None:
        super().__init__("explicit-pads")

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return None if call_params.padding == "SAME" else "the SAME-equals-explicit-pads oracle is for SAME cases"

    def _arguments(self, call: ConvCall, precision: str) -> dict[str, Any]:
        return {**super()._arguments(call, precision), "padding": [tuple(p) for p in call.geometry.pads]}


class JaxNchw(JaxConvGeneralDilated):
    """Oracle: NCHW input and OIHW kernel through dimension numbers, output transposed back."""

    baseline = PRIMARY

    def __init__(self) -> None:
        super().__init__("nchw")

    def _arguments(self, call: ConvCall, precision: str) -> dict[str, Any]:
        return {**super()._arguments(call, precision), "dimension_numbers": ("NCHW", "OIHW", "NCHW")}

    def _layout_input(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def _layout_kernel(self, w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w.transpose(3, 2, 0, 1))

    def _layout_output(self, y: np.ndarray) -> np.ndarray:
        return y.transpose(0, 2, 3, 1)

    def _source_call(self, conv: str, arguments: str) -> str:
        return f"{conv}(x_j.transpose(0, 3, 1, 2), w_j.transpose(3, 2, 0, 1), {arguments}).transpose(0, 2, 3, 1)"


class JaxDerivative(DerivativeAdapter):
    """jax.vjp of the primary call; the HVP is reverse over reverse (jax.vjp of the function that
    returns the first vjp), the path that exercises the transpose of conv_general_dilated's own
    transpose rules (the rule that was once wrong for rhs_dilation > 1)."""

    primary: JaxConvGeneralDilated

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        assert call.cotangent is not None and call.direction_input is not None and call.direction_kernel is not None
        jax = _jax()
        where = _device(device)
        x, w, dy, vx, vw = (
            jax.device_put(a, where)
            for a in (call.x, call.w, call.cotangent, call.direction_input, call.direction_kernel)
        )
        arguments = self.primary._arguments(call, precision)

        def convolve(a: Any, b: Any) -> Any:
            return jax.lax.conv_general_dilated(a, b, **arguments)

        def gradients(a: Any, b: Any) -> Any:
            return jax.vjp(convolve, a, b)[1](dy)

        wrt = 0 if self.with_respect_to == "input" else 1
        result = gradients(x, w)[wrt] if self.order == 1 else jax.vjp(gradients, x, w)[1]((vx, vw))[wrt]
        out = np.asarray(result)
        return out.astype(float_format(out.dtype.name).numpy_dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        arguments = self.primary._arguments(call, precision)
        arguments["precision"] = "jax.lax.Precision.HIGHEST" if precision == "strict" else "None"
        text = _keywords_source(arguments)
        wrt = 0 if self.with_respect_to == "input" else 1
        names = ("x", "w", "dy", *(("vx", "vw") if self.order == 2 else ()))
        lines = [
            "import jax, jax.numpy as jnp",
            "jax.config.update('jax_enable_x64', True)",
            f"dev = jax.devices('{device}')[0]",
            *(f"{n}_j = jax.device_put(jnp.asarray({n}, jnp.float64), dev).astype(jnp.{call.dtype})" for n in names),
            f"conv = lambda a, b: jax.lax.conv_general_dilated(a, b, {text})",
            "grads = lambda a, b: jax.vjp(conv, a, b)[1](dy_j)",
        ]
        if self.order == 1:
            lines.append(f"g = grads(x_j, w_j)[{wrt}]")
        else:
            lines.append(f"g = jax.vjp(grads, x_j, w_j)[1]((vx_j, vw_j))[{wrt}]  # H v, reverse over reverse")
        return "\n".join(lines)


ADAPTERS = (
    PRIMARY,
    JaxConvGeneralDilated("jit"),
    JaxZeroInserted(),
    JaxExplicitPads(),
    JaxNchw(),
    DeviceComparison(PRIMARY),
    *(JaxDerivative(PRIMARY, quantity) for quantity in QUANTITIES),
)
