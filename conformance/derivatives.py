"""Gradient conformance: the quantities derivative targets compute, their references and bounds.

Every derivative check differentiates the scalar L(x, w) = <conv(x, w), dy> for a fixed, seeded
cotangent dy (the shape of the output):

    grad-input   dL/dx = conv_input_grad(dy, w)    one sum of n = taps_h * taps_w * C_out/g products
    grad-kernel  dL/dw = conv_kernel_grad(x, dy)   one sum of n = N * o_h * o_w products

where taps = how many kernel taps can meet one input position (`taps_meeting_one_input`); the
products over spatial axes are written for 2-D (taps_h * taps_w, o_h * o_w) and take one factor per
axis in any rank. Second order is the Hessian-vector product of L in a seeded direction (vx, vw),
taken through the gradient (reverse over reverse, which exercises the transpose of each transpose
rule). L is bilinear, so H (vx, vw) = (dL/dx with kernel vw, dL/dw with input vx):

    hvp-input    conv_input_grad(dy, vw)           same n as grad-input
    hvp-kernel   conv_kernel_grad(vx, dy)          same n as grad-kernel

A transposed convolution (op = "conv_transpose") z = T_w(x) is the adjoint of the forward convolution
A_w of its geometry's `forward`: L = <T_w x, dy> = <x, A_w dy>, so its derivatives are forward ones:

    output       conv_transpose(x, w)          n = taps_h * taps_w * C_in/g
    grad-input   conv(dy, w)                   n = k_h * k_w * C_out/g
    grad-kernel  conv_kernel_grad(dy, x)       n = N * i_h * i_w (every input pixel)
    hvp-*        the same with vw, vx in place of w, x

Each element is one dot product of two case-dtype operands, so the forward pass's bound applies
with that n and S = the same sum over absolute values; integer data whose partial sums fit the
format must match bit for bit. Derivatives are checked on finite data only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from typing import Any

import numpy as np

from conformance import held_memory, reference, timing
from conformance.adapters.base import OUTPUT, Unsupported
from conformance.cases import Case, materialize, tensor
from conformance.compare import ErrorModel, Expected
from conformance.dtypes import float_format
from conformance.semantics import TransposedGeometry, taps_meeting_one_input
from conformance.sweeps import derived_seed


@dataclass(frozen=True, eq=False)  # identity hash: a cache key, like Case
class Tangents:
    """The seeded cotangent and HVP direction of one (case, dtype), in the case dtype."""

    cotangent: np.ndarray  # dy, NHWC, the output's shape
    direction_input: np.ndarray  # vx, NHWC
    direction_kernel: np.ndarray  # vw, HWIO
    specs: Mapping[str, tuple[Mapping[str, Any], tuple[int, ...]]]  # name -> (generator spec, shape)


def tangent_spec(case: Case, name: str, integer: bool) -> dict[str, Any]:
    """Small integers where the case data are integers (so exactness carries over to the gradients),
    uniform on [-1, 1) otherwise; the seed comes from the case id, so it is stable across edits."""
    seed = derived_seed(0, case.qualified_id, name)
    if integer:
        return {"generator": "integers", "low": -2, "high": 2, "seed": seed}
    return {"generator": "uniform", "low": -1.0, "high": 1.0, "seed": seed}


@held_memory.bounded_cache(16)
def tangents(case: Case, dtype: str) -> Tangents:
    data = materialize(case, dtype)
    x64, w64 = data.x.astype(np.float64), data.w.astype(np.float64)
    if not (np.isfinite(x64).all() and np.isfinite(w64).all()):
        raise Unsupported("derivatives are checked on finite data only (this case holds NaN or Inf)")
    integer = bool(np.all(x64 == np.round(x64)) and np.all(w64 == np.round(w64)))
    shapes = {"dy": case.output_shape, "vx": case.input_shape, "vw": case.kernel_shape}
    specs = {name: (tangent_spec(case, name, integer), tuple(shape)) for name, shape in shapes.items()}
    made = {name: tensor(spec, shape, dtype) for name, (spec, shape) in specs.items()}
    return Tangents(made["dy"], made["vx"], made["vw"], specs)


def accumulation_length(case: Case, quantity: str) -> int:
    """n of the error bound: how many products one element of `quantity` sums."""
    geo = case.geometry
    taps = prod(taps_meeting_one_input(k, r, s) for k, r, s in zip(geo.kernel_size, geo.rate, geo.stride, strict=True))
    if isinstance(geo, TransposedGeometry):
        if quantity == OUTPUT:  # (the forward op's input gradient, summing over this op's input channels)
            return taps * (case.input_shape[-1] // case.groups)
        if quantity.endswith("-input"):
            *kernel, out_per_group, _ = case.kernel_shape
            return prod(kernel) * out_per_group
        return prod(case.input_shape[:-1])  # (every input pixel of every image)
    if quantity == OUTPUT:
        *kernel, c_per_group, _ = case.kernel_shape
        return prod(kernel) * c_per_group
    if quantity.endswith("-input"):
        return taps * (case.kernel_shape[-1] // case.groups)
    return case.input_shape[0] * prod(geo.output_size)


def _operands(case: Case, quantity: str, x: np.ndarray, w: np.ndarray, t: Tangents) -> tuple[np.ndarray, np.ndarray]:
    """The two tensors whose products the quantity sums, in the order the reference takes them."""
    if case.transposed:
        return {
            "grad-input": (t.cotangent, w),
            "grad-kernel": (t.cotangent, x),
            "hvp-input": (t.cotangent, t.direction_kernel),
            "hvp-kernel": (t.cotangent, t.direction_input),
        }[quantity]
    return {
        "grad-input": (t.cotangent, w),
        "grad-kernel": (x, t.cotangent),
        "hvp-input": (t.cotangent, t.direction_kernel),
        "hvp-kernel": (t.direction_input, t.cotangent),
    }[quantity]


def exact_answer(case: Case, quantity: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The float64 derivative from the quantity's two operands (see `_operands`)."""
    geo, groups = case.geometry, case.groups
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if isinstance(geo, TransposedGeometry):  # (a, b) = (dy, w) or (dy, x): see the module's docstring
        if quantity.endswith("-input"):
            return reference.conv_resolved(a64, b64, geo.forward, groups)
        return reference.conv_kernel_grad(a64, b64, geo.forward, groups)
    if quantity.endswith("-input"):
        return reference.conv_input_grad(a64, b64, geo, groups)
    return reference.conv_kernel_grad(a64, b64, geo, groups)


@held_memory.bounded_cache(16)
def _answer(case: Case, dtype: str, quantity: str, tangents: Tangents) -> tuple[np.ndarray, np.ndarray]:
    data = materialize(case, dtype)
    a, b = _operands(case, quantity, data.x, data.w, tangents)
    with timing.spent(timing.REFERENCE):
        return exact_answer(case, quantity, a, b), exact_answer(case, quantity, np.abs(a), np.abs(b))


def expected(
    case: Case, dtype: str, quantity: str, tangents: Tangents, tf32: bool, random_data: bool = False
) -> Expected:
    """What a derivative target must return: the float64 answer, its bound, bit-exactness."""
    values, abs_products = _answer(case, dtype, quantity, tangents)
    data = materialize(case, dtype)
    a, b = _operands(case, quantity, data.x, data.w, tangents)
    # (TF32 rounds float32 operands to 11 bits: integers stay exact only while they fit.)
    # (dy, vx and vw are seeded uniform data: random when the case's own data are)
    model = ErrorModel(float_format(dtype), accumulation_length(case, quantity), tf32=tf32, random_data=random_data)
    kernel = quantity.endswith("-kernel")
    return Expected(
        values=values,
        abs_products=abs_products,
        output_shape=case.kernel_shape if kernel else case.input_shape,
        model=model,
        exact=model.requires_exact(a, b, abs_products),
        layout="HWIO" if kernel else "NHWC",
    )
