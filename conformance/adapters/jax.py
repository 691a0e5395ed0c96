"""JAX: `jax.lax.conv_general_dilated` with NHWC/HWIO dimension numbers.

float64 needs `jax_enable_x64`, which is process-wide and must be set before arrays exist, so
the adapter sets it when it first loads JAX. strict mode passes precision=HIGHEST (no TF32 or
bf16 passes on GPU); defaults mode passes None, what a user gets without asking.

The tensors are cast (and, for the NCHW oracle, transposed) in NumPy before `device_put`, so that
only the convolution itself is compiled.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

from conformance.adapters import oracles, padding
from conformance.adapters.base import (
    QUANTITIES,
    CallParams,
    ConvCall,
    DerivativeAdapter,
    DescribedAdapter,
    DeviceComparison,
    Unavailable,
)
from conformance.adapters.modes import numpy_output, physical_device
from conformance.adapters.program import (
    Assign,
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

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Set by the plugin for a run's xdist workers (the framework record's shared directory).
COMPILATION_CACHE_VARIABLE = JAX.shared_directories[0][0]


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


def _platform(device: str) -> str:
    """JAX's platform name for a target's device (one place, so tests can point "gpu" elsewhere)."""
    return "gpu" if physical_device(device) == "gpu" else "cpu"


def _prelude(device: str) -> list[Statement]:
    return [
        Import("jax"),
        Import("jax.numpy", "jnp"),
        Do(invoke("jax.config.update", "jax_enable_x64", True)),
        Assign("dev", Index(invoke("jax.devices", _platform(device)), 0)),
    ]


def _placed(array: Value, dtype: str) -> Expr:
    """`jax.device_put(array.astype(jnp.dtype), dev)`: rounded to the case dtype by NumPy."""
    return invoke(
        "jax.device_put",
        method(array if isinstance(array, Expr) else Name(array), "astype", Name(f"jnp.{dtype}")),
        Name("dev"),
    )


class JaxConvGeneralDilated(DescribedAdapter):
    framework = JAX
    op = "conv_general_dilated"

    def __init__(self, variant: str | None = None) -> None:
        if variant is not None:  # (an oracle's class says its own)
            self.variant = variant

    def check_available(self, device: str) -> None:
        jax = _jax()
        try:
            jax.devices(_platform(device))
        except RuntimeError as exc:
            raise Unavailable(f"no {device.upper()} backend in jax {jax.__version__}: {first_line(exc)}") from None

    def convolution(self, call: ConvCall, lhs: Expr, rhs: Expr, arguments: dict[str, Value]) -> Expr:
        """The call on an input and a kernel (as the derivatives differentiate it)."""
        return invoke("jax.lax.conv_general_dilated", lhs, rhs, **arguments)

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        arguments = self.arguments(call, precision)
        conv: Expr = Name("jax.lax.conv_general_dilated")
        if self.variant == "jit":
            # Static arguments must be hashable: explicit pads as a tuple of pairs.
            if isinstance(arguments["padding"], list):
                arguments["padding"] = tuple(arguments["padding"])
            conv = invoke("jax.jit", conv, static_argnames=tuple(arguments))
        return Program(
            (
                *_prelude(device),
                *self.inputs(call),
                Assign("y", self.output(invoke(conv, Name("x_j"), Name("w_j"), **arguments))),
            )
        )

    def inputs(self, call: ConvCall) -> list[Statement]:
        return [
            *self.kernel_imports(call),
            Assign("x_j", _placed("x", call.dtype), "NHWC"),
            Assign("w_j", _placed(self.kernel(call), call.dtype), "HWIO"),
        ]

    def output(self, convolution: Expr) -> Expr:
        return convolution

    def arguments(self, call: ConvCall, precision: str) -> dict[str, Value]:
        word = padding.native_word(call.padding)
        return {
            "window_strides": call.stride,
            "padding": word if word is not None else padding.spatial_pairs(call.geometry.pads),
            "rhs_dilation": call.rate,
            "dimension_numbers": DIMENSION_NUMBERS,
            "feature_group_count": call.groups,
            "precision": Name("jax.lax.Precision.HIGHEST") if precision == "strict" else None,
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


PRIMARY = JaxConvGeneralDilated()


class JaxZeroInserted(oracles.ZeroInserted, JaxConvGeneralDilated):
    """Oracle: rhs_dilation 1 with the kernel's taps spread out by explicit zeros."""

    baseline = PRIMARY

    def arguments(self, call: ConvCall, precision: str) -> dict[str, Value]:
        return {**super().arguments(call, precision), "rhs_dilation": (1, 1)}


class JaxExplicitPads(oracles.ExplicitPads, JaxConvGeneralDilated):
    """Oracle: SAME written out as the explicit pads of DESIGN.md."""

    baseline = PRIMARY

    def arguments(self, call: ConvCall, precision: str) -> dict[str, Value]:
        return {**super().arguments(call, precision), "padding": padding.spatial_pairs(call.geometry.pads)}


class JaxNchw(JaxConvGeneralDilated):
    """Oracle: NCHW input and OIHW kernel through dimension numbers, output transposed back."""

    baseline = PRIMARY

    def __init__(self) -> None:
        super().__init__("nchw")

    def inputs(self, call: ConvCall) -> list[Statement]:
        return [
            Assign("x_j", _placed(method("x", "transpose", 0, 3, 1, 2), call.dtype), "NHWC -> NCHW"),
            Assign("w_j", _placed(method("w", "transpose", 3, 2, 0, 1), call.dtype), "HWIO -> OIHW"),
        ]

    def arguments(self, call: ConvCall, precision: str) -> dict[str, Value]:
        return {**super().arguments(call, precision), "dimension_numbers": ("NCHW", "OIHW", "NCHW")}

    def output(self, convolution: Expr) -> Expr:
        return method(invoke("np.asarray", convolution), "transpose", 0, 2, 3, 1)

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        program = super().describe(call, device, precision)
        return Program((Import("numpy", "np"), *program.statements))


class JaxDerivative(DerivativeAdapter, DescribedAdapter):
    """jax.vjp of the primary call; the HVP is reverse over reverse (jax.vjp of the function that
    returns the first vjp), the path that exercises the transpose of conv_general_dilated's own
    transpose rules (the rule that was once wrong for rhs_dilation > 1)."""

    primary: JaxConvGeneralDilated

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        arguments = self.primary.arguments(call, precision)
        names = ("x", "w", "dy", *(("vx", "vw") if self.order == 2 else ()))
        wrt = 0 if self.with_respect_to == "input" else 1
        conv = Lambda(("a", "b"), self.primary.convolution(call, Name("a"), Name("b"), arguments))
        grads = Lambda(
            ("a", "b"), invoke(Index(invoke("jax.vjp", Name("conv"), Name("a"), Name("b")), 1), Name("dy_j"))
        )
        if self.order == 1:
            result = Assign("g", Index(invoke("grads", Name("x_j"), Name("w_j")), wrt))
        else:
            pullback = Index(invoke("jax.vjp", Name("grads"), Name("x_j"), Name("w_j")), 1)
            product = invoke(pullback, (Name("vx_j"), Name("vw_j")))
            result = Assign("g", Index(product, wrt), "H v, reverse over reverse")
        return Program(
            (
                *_prelude(device),
                *(Assign(f"{name}_j", _placed(name, call.dtype)) for name in names),
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

    def convolution(self, call: ConvCall, lhs: Expr, rhs: Expr, arguments: dict[str, Value]) -> Expr:
        return invoke("jax.lax.conv_transpose", lhs, rhs, **arguments)

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        y = self.convolution(call, Name("x_j"), Name("w_j"), self.arguments(call, precision))
        return Program((*_prelude(device), *self.inputs(call), Assign("y", y)))

    def arguments(self, call: ConvCall, precision: str) -> dict[str, Value]:
        word = padding.native_word(call.padding)
        return {
            "strides": call.stride,
            "padding": word if word is not None else padding.dilated_input_pads(call.geometry),
            "rhs_dilation": call.rate,
            "dimension_numbers": DIMENSION_NUMBERS,
            "transpose_kernel": True,
            "precision": Name("jax.lax.Precision.HIGHEST") if precision == "strict" else None,
        }


class JaxLhsDilation(JaxConvTranspose):
    """`conv_general_dilated` with lhs_dilation = the stride: the formulation of JAX's own gradient of a
    strided convolution. The kernel is flipped and its in/out axes swapped per group in the call."""

    op = "conv_general_dilated"
    variant = "lhs-dilation"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return None

    def convolution(self, call: ConvCall, lhs: Expr, rhs: Expr, arguments: dict[str, Value]) -> Expr:
        k_h, k_w, out_per_group, c_in = call.w.shape
        groups = call.groups
        grouped = method(invoke("jnp.flip", rhs, (0, 1)), "reshape", k_h, k_w, out_per_group, groups, c_in // groups)
        # (the size spelled out, not -1: reshape cannot infer -1 for a zero-sized kernel)
        swapped = method(
            method(grouped, "transpose", 0, 1, 4, 3, 2), "reshape", k_h, k_w, c_in // groups, groups * out_per_group
        )
        return invoke("jax.lax.conv_general_dilated", lhs, swapped, **arguments)

    def arguments(self, call: ConvCall, precision: str) -> dict[str, Value]:
        return {
            "window_strides": (1, 1),
            "padding": padding.dilated_input_pads(call.geometry),
            "lhs_dilation": call.stride,
            "rhs_dilation": call.rate,
            "dimension_numbers": DIMENSION_NUMBERS,
            "feature_group_count": call.groups,
            "precision": Name("jax.lax.Precision.HIGHEST") if precision == "strict" else None,
        }


TRANSPOSED = JaxConvTranspose()

ADAPTERS = (
    PRIMARY,
    JaxConvGeneralDilated("jit"),
    JaxZeroInserted(),
    JaxExplicitPads(),
    JaxNchw(),
    DeviceComparison(PRIMARY),
    *(JaxDerivative(PRIMARY, quantity) for quantity in QUANTITIES),
    TRANSPOSED,
    JaxLhsDilation(),
    DeviceComparison(TRANSPOSED),
    *(JaxDerivative(TRANSPOSED, quantity) for quantity in QUANTITIES),
)
