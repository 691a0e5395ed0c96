"""JAX: `jax.lax.conv_general_dilated` and `jax.lax.conv_transpose` with channels-last dimension numbers
(NWC/WIO, NHWC/HWIO, NDHWC/DHWIO): one target for every rank, as JAX has one function for all.

float64 needs `jax_enable_x64`, which is process-wide and must be set before arrays exist, so
the adapter sets it when it first loads JAX. strict mode passes precision=HIGHEST (no TF32 or
bf16 passes on GPU); defaults mode passes None, what a user gets without asking.

The tensors are cast (and, for the NCHW oracle, transposed) in NumPy before `device_put`, so that
only the convolution itself is compiled.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from conformance import compile_cache, layouts
from conformance.adapters import oracles, padding
from conformance.adapters.base import (
    QUANTITIES,
    CallParams,
    CallWrapper,
    ConvCall,
    DerivativeAdapter,
    DeviceComparison,
    FrameworkCall,
    Unavailable,
)
from conformance.adapters.modes import numpy_output, physical_device
from conformance.adapters.program import (
    Assign,
    Cached,
    Do,
    Expr,
    Import,
    Index,
    Lambda,
    Name,
    Program,
    Statement,
    Value,
    invoke,
    method,
)
from conformance.exception_text import first_line
from conformance.frameworks import JAX
from conformance.semantics import CONV_TRANSPOSE


def dimension_numbers(rank: int, channels_first: bool = False) -> tuple[str, str, str]:
    """The suite's layouts as JAX's dimension numbers: ("NHWC", "HWIO", "NHWC") in 2-D, ("NWC", "WIO",
    "NWC") in 1-D; channels first: ("NCHW", "OIHW", "NCHW")."""
    spatial = "DHW"[3 - rank :]
    if channels_first:
        return f"NC{spatial}", f"OI{spatial}", f"NC{spatial}"
    return f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"


@cache
def _jax() -> Any:
    try:
        import jax
    except ImportError as exc:
        raise Unavailable(f"JAX is not installed ({exc})") from None
    jax.config.update("jax_enable_x64", True)
    # What this process compiles, the run's other workers and the next run load (compile_cache.py).
    compile_cache.point_jax(jax, JAX)
    return jax


def _platform(device: str) -> str:
    """JAX's platform name for a target's device (one place, so tests can point "gpu" elsewhere)."""
    return "gpu" if physical_device(device) == "gpu" else "cpu"


def _placed(array: Expr, dtype: str) -> Expr:
    """`jax.device_put(array.astype(jnp.dtype), dev)`: rounded to the case dtype by NumPy."""
    return invoke("jax.device_put", method(array, "astype", Name(f"jnp.{dtype}")), Name("dev"))


def _precision(precision: str) -> Value:
    return Name("jax.lax.Precision.HIGHEST") if precision == "strict" else None


class JaxConvGeneralDilated(FrameworkCall):
    """`jax.lax.conv_general_dilated` on the suite's own layouts through dimension numbers."""

    framework = JAX
    op = "conv_general_dilated"
    ranks = (1, 2, 3)

    def check_available(self, device: str) -> None:
        jax = _jax()
        try:
            jax.devices(_platform(device))
        except RuntimeError as exc:
            raise Unavailable(f"no {device.upper()} backend in jax {jax.__version__}: {first_line(exc)}") from None

    def prelude(self, device: str, precision: str) -> list[Statement]:
        return [
            Import("jax"),
            Import("jax.numpy", "jnp"),
            Do(invoke("jax.config.update", "jax_enable_x64", True)),
            Assign("dev", Index(invoke("jax.devices", _platform(device)), 0)),
        ]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        """The tensors cast in NumPy before `device_put`, so that only the convolution is compiled."""
        return [
            Assign("x_t", _placed(Name("x"), call.dtype), "NHWC"),
            Assign("w_t", _placed(kernel, call.dtype), "HWIO"),
        ]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return invoke("jax.lax.conv_general_dilated", Name("x_t"), Name("w_t"), **self.arguments(call, precision))

    def arguments(self, call: ConvCall, precision: str) -> dict[str, Value]:
        word = padding.native_word(call.padding)
        return {
            "window_strides": call.stride,
            "padding": word if word is not None else padding.spatial_pairs(call.geometry.pads),
            "rhs_dilation": call.rate,
            "dimension_numbers": dimension_numbers(len(call.rate)),
            "feature_group_count": call.groups,
            "precision": _precision(precision),
        }

    def to_numpy(self, value: Any) -> np.ndarray:
        out = np.asarray(value)
        return numpy_output(out, out.dtype.name)

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


class Jitted(CallWrapper):
    """The call under `jax.jit`, compiled once per text and reused by every check that shares it."""

    def __init__(self, inner: FrameworkCall) -> None:
        super().__init__(inner, "jit")

    def execution(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        # (a closure: every argument but the tensors is static, as static_argnames would make it)
        function = Cached(
            invoke("jax.jit", Lambda(("x_t", "w_t"), self.invocation(call, precision))), (device, call.dtype)
        )
        return [Assign("y", self.read_back(call, invoke(function, Name("x_t"), Name("w_t"))))]


PRIMARY = JaxConvGeneralDilated()


class Nchw(CallWrapper):
    """Oracle: NCHW input and OIHW kernel through dimension numbers, output transposed back."""

    inner: JaxConvGeneralDilated

    def __init__(self) -> None:
        super().__init__(PRIMARY, "nchw")
        self.baseline = PRIMARY

    def prelude(self, device: str, precision: str) -> list[Statement]:
        return [Import("numpy", "np"), *self.inner.prelude(device, precision)]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        rank = len(call.rate)
        return [
            Assign("x_t", _placed(method("x", "transpose", *layouts.channels_first(rank)), call.dtype), "NHWC -> NCHW"),
            Assign(
                "w_t", _placed(method(kernel, "transpose", *layouts.out_in_first(rank)), call.dtype), "HWIO -> OIHW"
            ),
        ]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        channels_first = dimension_numbers(len(call.rate), channels_first=True)
        arguments = {**self.inner.arguments(call, precision), "dimension_numbers": channels_first}
        return invoke("jax.lax.conv_general_dilated", Name("x_t"), Name("w_t"), **arguments)

    def read_back(self, call: ConvCall, result: Expr) -> Expr:
        rank = len(call.rate)
        return method(invoke("np.asarray", result), "transpose", *layouts.channels_last(rank))


class JaxDerivative(DerivativeAdapter):
    """jax.vjp of the primary call; the HVP is reverse over reverse (jax.vjp of the function that
    returns the first vjp), the path that exercises the transpose of conv_general_dilated's own
    transpose rules (the rule that was once wrong for rhs_dilation > 1)."""

    inner: JaxConvGeneralDilated

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        names = ("dy", *(("vx", "vw") if self.order == 2 else ()))
        wrt = 0 if self.with_respect_to == "input" else 1
        conv = Lambda(("x_t", "w_t"), self.inner.invocation(call, precision))
        grads = Lambda(
            ("a", "b"), invoke(Index(invoke("jax.vjp", Name("conv"), Name("a"), Name("b")), 1), Name("dy_t"))
        )
        if self.order == 1:
            result = Assign("g", Index(invoke("grads", Name("x_t"), Name("w_t")), wrt))
        else:
            pullback = Index(invoke("jax.vjp", Name("grads"), Name("x_t"), Name("w_t")), 1)
            product = invoke(pullback, (Name("vx_t"), Name("vw_t")))
            result = Assign("g", Index(product, wrt), "H v, reverse over reverse")
        return Program(
            (
                *self.inner.prelude(device, precision),
                *self.inner.tensors(call, self.inner.kernel(call), device, precision),
                *(Assign(f"{name}_t", _placed(Name(name), call.dtype)) for name in names),
                Assign("conv", conv),
                Assign("grads", grads),
                result,
            ),
            result="g",
        )


class JaxConvTranspose(JaxConvGeneralDilated):
    """`jax.lax.conv_transpose(transpose_kernel=True)`: the kernel flipped and its in/out axes swapped
    by JAX, which makes it the gradient of conv_general_dilated (without it, JAX computes a
    stride-dilated correlation with the kernel as given, what its docs call the non-gradient form).
    SAME and VALID are JAX's own words (its `_conv_transpose_padding`), explicit crops become pads."""

    op = "conv_transpose"
    operation = CONV_TRANSPOSE

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return "jax.lax.conv_transpose has no feature_group_count (groups)" if call_params.groups != 1 else None

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return invoke("jax.lax.conv_transpose", Name("x_t"), Name("w_t"), **self.arguments(call, precision))

    def arguments(self, call: ConvCall, precision: str) -> dict[str, Value]:
        word = padding.native_word(call.padding)
        return {
            "strides": call.stride,
            "padding": word if word is not None else padding.dilated_input_pads(call.geometry),
            "rhs_dilation": call.rate,
            "dimension_numbers": dimension_numbers(len(call.rate)),
            "transpose_kernel": True,
            "precision": _precision(precision),
        }


TRANSPOSED = JaxConvTranspose()


class LhsDilation(CallWrapper):
    """`conv_general_dilated` with lhs_dilation = the stride: the formulation of JAX's own gradient of a
    strided convolution, against `conv_transpose`. The kernel is flipped and its in/out axes swapped
    per group in the call."""

    def __init__(self) -> None:
        super().__init__(TRANSPOSED, "lhs-dilation")
        self.op = "conv_general_dilated"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return None

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        *taps, out_per_group, c_in = call.w.shape
        rank, groups = len(taps), call.groups
        flipped = invoke("jnp.flip", Name("w_t"), tuple(range(rank)))
        grouped = method(flipped, "reshape", *taps, out_per_group, groups, c_in // groups)
        # (the size spelled out, not -1: reshape cannot infer -1 for a zero-sized kernel)
        swapped = method(
            method(grouped, "transpose", *range(rank), rank + 2, rank + 1, rank),
            "reshape", *taps, c_in // groups, groups * out_per_group,
        )  # fmt: skip
        arguments: dict[str, Value] = {
            "window_strides": (1,) * rank,
            "padding": padding.dilated_input_pads(call.geometry),
            "lhs_dilation": call.stride,
            "rhs_dilation": call.rate,
            "dimension_numbers": dimension_numbers(rank),
            "feature_group_count": call.groups,
            "precision": _precision(precision),
        }
        return invoke("jax.lax.conv_general_dilated", Name("x_t"), swapped, **arguments)


ADAPTERS = (
    PRIMARY,
    Jitted(PRIMARY),
    oracles.ZeroInserted(PRIMARY),
    oracles.ExplicitPads(PRIMARY),
    Nchw(),
    DeviceComparison(PRIMARY),
    *(JaxDerivative(PRIMARY, quantity) for quantity in QUANTITIES),
    TRANSPOSED,
    LhsDilation(),
    DeviceComparison(TRANSPOSED),
    *(JaxDerivative(TRANSPOSED, quantity) for quantity in QUANTITIES),
)
