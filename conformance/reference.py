"""The float64 NumPy reference for dilated convolution of any rank: channels-last input
(N, *spatial, C: NWC, NHWC, NDHWC) and kernel (*spatial, C_in/g, C_out: WIO, HWIO, DHWIO).

Independent of every framework under test. It loops over the kernel taps (k_h*k_w in 2-D, a
handful) and never over output pixels: each tap is one strided view of the padded input and one
matrix product, so the work lands in BLAS.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from conformance.semantics import Geometry, PaddingSpec, PadPairs, Sizes, TransposedGeometry, geometry, per_axis


def conv(
    x: np.ndarray,
    w: np.ndarray,
    *,
    rate: int | Sequence[int] = 1,
    stride: int | Sequence[int] = 1,
    padding: PaddingSpec = "VALID",
    groups: int = 1,
) -> np.ndarray:
    """y[n,a,b,o] = sum_{u,v,c} x_pad[n, a*s_h + u*r_h, b*s_w + v*r_w, c] * w[u,v,c,o], in float64
    (in 2-D; the same sum over one tap index per spatial axis in any rank).

    Cross-correlation (no kernel flip), as every framework computes it. Returns an array with
    a zero-sized spatial axis when the dilated kernel does not fit (see `Geometry.output_size`).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    rank = x.ndim - 2
    if rank < 1 or w.ndim != x.ndim:
        raise ValueError(
            "expected a channels-last input (N, *spatial, C) and a kernel (*spatial, C_in/g, C_out) with as many "
            f"spatial axes (NHWC and HWIO in 2-D), got shapes {x.shape} and {w.shape}"
        )
    geo = geometry(padding, x.shape[1:-1], w.shape[:-2], per_axis(rate, rank), per_axis(stride, rank))
    return conv_resolved(x, w, geo, groups)


# Special-value cases put Inf and NaN through the sums on purpose: IEEE's answer is the reference, not a warning.
_IEEE = np.errstate(invalid="ignore", over="ignore")


def _spatial_labels(rank: int) -> str:
    """einsum labels of the spatial axes: "hw" in 2-D (so a 2-D contraction is spelt, planned and
    summed exactly as it always was), "w" in 1-D, "dhw" in 3-D; beyond, any letters but n, g, c, o."""
    if rank <= 3:
        return "dhw"[3 - rank :]
    return "".join(letter for letter in string.ascii_lowercase if letter not in "ngco")[:rank]


def _taps(tap: Sizes, rate: Sizes, stride: Sizes, count: Sizes) -> tuple[slice, ...]:
    """The index of the `count` positions one tap meets per axis (u*r, u*r + s, ...), batch whole."""
    return (
        slice(None),
        *(slice(u * r, u * r + (o - 1) * s + 1, s) for u, r, s, o in zip(tap, rate, stride, count, strict=True)),
    )


@_IEEE
def conv_resolved(x: np.ndarray, w: np.ndarray, geo: Geometry, groups: int) -> np.ndarray:
    """`conv` for a geometry already resolved by `conformance.semantics`."""
    n, c_in = x.shape[0], x.shape[-1]
    *kernel, c_per_group, c_out = w.shape
    if c_in != c_per_group * groups or c_out % groups:
        raise ValueError(
            f"input channels {c_in}, kernel {w.shape} and groups {groups} are inconsistent: "
            "need C_in == kernel_in * groups and C_out divisible by groups"
        )
    out = geo.output_size
    out_per_group = c_out // groups
    y = np.zeros((n, *out, groups, out_per_group), dtype=np.float64)
    if not all(out):
        return y.reshape(n, *out, c_out)
    x_pad = _padded(x, geo.pads)
    w_grouped = w.reshape(*kernel, c_per_group, groups, out_per_group)
    space = _spatial_labels(geo.rank)
    # Per group: (pixels, C_in/g) @ (C_in/g, C_out/g), batched over groups by einsum.
    subscripts = f"n{space}gc,cgo->n{space}go"
    path = None
    for tap in np.ndindex(*kernel):  # (the last axis' taps fastest, as nested loops)
        window = x_pad[_taps(tap, geo.rate, geo.stride, out)].reshape(n, *out, groups, c_per_group)
        path = path or _path(subscripts, window, w_grouped[tap])
        y += np.einsum(subscripts, window, w_grouped[tap], optimize=path)
    return y.reshape(n, *out, c_out)


def _padded(x: np.ndarray, pads: PadPairs) -> np.ndarray:
    """x with zeros added per side; a negative pad crops instead (the forward convolution that a
    transposed one with output_padding is the adjoint of never reads its last pixels)."""
    x = np.pad(x, ((0, 0), *((max(before, 0), max(after, 0)) for before, after in pads), (0, 0)))
    kept = (
        slice(max(-before, 0), size - max(-after, 0)) for (before, after), size in zip(pads, x.shape[1:-1], strict=True)
    )
    return x[(slice(None), *kept)]


def _path(subscripts: str, a: np.ndarray, b: np.ndarray) -> list[Any]:
    """einsum's contraction plan, made once per call: every tap has the same shapes, and planning
    costs more than contracting the small tensors of most cases."""
    return np.einsum_path(subscripts, a, b, optimize="greedy")[0]


# The backward pass. Written from the definitions, not by differentiating `conv_resolved`, so that
# each can catch the other: tests check the adjoint identity <conv(x, w), dy> = <x, dx> = <w, dw>.


@_IEEE
def conv_input_grad(dy: np.ndarray, w: np.ndarray, geo: Geometry, groups: int) -> np.ndarray:
    """dL/dx for the cotangent dy = dL/dy: a transposed, dilated correlation.

    Insert s-1 zeros between the cotangent's pixels (undoing the stride), border it with k_eff-1
    zeros, and correlate at the same rate with the kernel flipped in space and transposed in
    channels (per group); the result is the gradient of the padded input, cropped to the input.
    """
    dy = np.asarray(dy, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, out, c_out = dy.shape[0], dy.shape[1:-1], dy.shape[-1]
    *kernel, c_per_group, _ = w.shape
    out_per_group = c_out // groups
    effective, padded = geo.effective_kernel, geo.padded_size
    dx_pad = np.zeros((n, *padded, groups, c_per_group), dtype=np.float64)
    if all(out):
        bordered = (p + e - 1 for p, e in zip(padded, effective, strict=True))
        spread = np.zeros((n, *bordered, groups, out_per_group), dtype=np.float64)
        placed = (slice(e - 1, e - 1 + (o - 1) * s + 1, s) for e, o, s in zip(effective, out, geo.stride, strict=True))
        spread[(slice(None), *placed)] = dy.reshape(n, *out, groups, out_per_group)
        flipped = w[(slice(None, None, -1),) * geo.rank].reshape(*kernel, c_per_group, groups, out_per_group)
        space = _spatial_labels(geo.rank)
        subscripts = f"n{space}go,cgo->n{space}gc"
        path = None
        for tap in np.ndindex(*kernel):
            reach = (slice(u * r, u * r + p) for u, r, p in zip(tap, geo.rate, padded, strict=True))
            window = spread[(slice(None), *reach)]
            path = path or _path(subscripts, window, flipped[tap])
            dx_pad += np.einsum(subscripts, window, flipped[tap], optimize=path)
    kept = (slice(before, before + i) for (before, _), i in zip(geo.pads, geo.input_size, strict=True))
    return dx_pad[(slice(None), *kept)].reshape(n, *geo.input_size, groups * c_per_group)


@_IEEE
def conv_kernel_grad(x: np.ndarray, dy: np.ndarray, geo: Geometry, groups: int) -> np.ndarray:
    """dL/dw for the cotangent dy: per kernel tap (u, v in 2-D), the correlation of the padded input,
    sampled at that tap's rate offset and the stride, with the cotangent, summed over the batch
    and every output pixel (an accumulation of N * o_h * o_w products per kernel element in 2-D)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    n, c_in = x.shape[0], x.shape[-1]
    out, c_out = dy.shape[1:-1], dy.shape[-1]
    kernel = geo.kernel_size
    c_per_group, out_per_group = c_in // groups, c_out // groups
    x_pad = _padded(x, geo.pads)
    cotangent = dy.reshape(n, *out, groups, out_per_group)
    dw = np.zeros((*kernel, c_per_group, groups, out_per_group), dtype=np.float64)
    if all(out):
        space = _spatial_labels(geo.rank)
        subscripts = f"n{space}gc,n{space}go->cgo"
        path = None
        for tap in np.ndindex(*kernel):
            sampled = x_pad[_taps(tap, geo.rate, geo.stride, out)].reshape(n, *out, groups, c_per_group)
            path = path or _path(subscripts, sampled, cotangent)
            dw[tap] = np.einsum(subscripts, sampled, cotangent, optimize=path)
    return dw.reshape(*kernel, c_per_group, c_out)


@_IEEE
def conv_transpose_resolved(y: np.ndarray, w: np.ndarray, geo: TransposedGeometry, groups: int) -> np.ndarray:
    """The transposed convolution, from its own definition: z[p] = sum y[a] w[u] over a*s + u*r - p_before = p.

    y is channels-last with C_in channels; w is the forward convolution's kernel, (*k, C_out/g, C_in)
    ((k_h, k_w, C_out/g, C_in) in 2-D: TensorFlow's conv2d_transpose filters). Each tap scatters
    y @ w[tap] into a strided view of the full output, which is then cropped by the pads and
    extended by output_padding (pixels no tap reaches stay zero). Written by scattering, not by
    reusing `conv_input_grad`'s gathering, so that tests comparing the two and the adjoint
    identity catch either one's mistake."""
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, size, c_in = y.shape[0], y.shape[1:-1], y.shape[-1]
    *kernel, out_per_group, _ = w.shape
    in_per_group = c_in // groups
    out = geo.output_size
    # Room for the crops and the output_padding beyond the full output.
    room = (max(full, before + o) for full, (before, _), o in zip(geo.full_size, geo.pads, out, strict=True))
    full = np.zeros((n, *room, groups, out_per_group), dtype=np.float64)
    grouped_y = y.reshape(n, *size, groups, in_per_group)
    grouped_w = w.reshape(*kernel, out_per_group, groups, in_per_group)
    if all(out):
        space = _spatial_labels(geo.rank)
        subscripts = f"n{space}gc,ogc->n{space}go"
        path = None
        for tap in np.ndindex(*kernel):
            path = path or _path(subscripts, grouped_y, grouped_w[tap])
            full[_taps(tap, geo.rate, geo.stride, size)] += np.einsum(
                subscripts, grouped_y, grouped_w[tap], optimize=path
            )
    kept = (slice(before, before + o) for (before, _), o in zip(geo.pads, out, strict=True))
    return full[(slice(None), *kept)].reshape(n, *out, groups * out_per_group)
