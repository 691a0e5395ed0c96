"""The float64 NumPy reference for dilated 2-D convolution (NHWC input, HWIO kernel).

Independent of every framework under test. It loops over the k_h*k_w kernel taps (a handful)
and never over output pixels: each tap is one strided view of the padded input and one
matrix product, so the work lands in BLAS.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.semantics import Geometry, PaddingSpec, PadPairs, TransposedGeometry, geometry, pair


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    *,
    rate: int | tuple[int, int] = 1,
    stride: int | tuple[int, int] = 1,
    padding: PaddingSpec = "VALID",
    groups: int = 1,
) -> np.ndarray:
    """y[n,a,b,o] = sum_{u,v,c} x_pad[n, a*s_h + u*r_h, b*s_w + v*r_w, c] * w[u,v,c,o], in float64.

    Cross-correlation (no kernel flip), as every framework computes it. Returns an array with
    a zero-sized spatial axis when the dilated kernel does not fit (see `Geometry.output_hw`).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"expected NHWC input and HWIO kernel, got shapes {x.shape} and {w.shape}")
    geo = geometry(padding, x.shape[1:3], w.shape[:2], pair(rate), pair(stride))
    return conv2d_resolved(x, w, geo, groups)


# Special-value cases put Inf and NaN through the sums on purpose: IEEE's answer is the reference, not a warning.
_IEEE = np.errstate(invalid="ignore", over="ignore")


@_IEEE
def conv2d_resolved(x: np.ndarray, w: np.ndarray, geo: Geometry, groups: int) -> np.ndarray:
    """`conv2d` for a geometry already resolved by `conformance.semantics`."""
    n, _, _, c_in = x.shape
    k_h, k_w, c_per_group, c_out = w.shape
    if c_in != c_per_group * groups or c_out % groups:
        raise ValueError(
            f"input channels {c_in}, kernel {w.shape} and groups {groups} are inconsistent: "
            "need C_in == kernel_in * groups and C_out divisible by groups"
        )
    o_h, o_w = geo.output_hw
    out_per_group = c_out // groups
    y = np.zeros((n, o_h, o_w, groups, out_per_group), dtype=np.float64)
    if o_h == 0 or o_w == 0:
        return y.reshape(n, o_h, o_w, c_out)
    x_pad = _padded(x, geo.pads)
    (r_h, r_w), (s_h, s_w) = geo.rate, geo.stride
    w_grouped = w.reshape(k_h, k_w, c_per_group, groups, out_per_group)
    path = None
    for u in range(k_h):
        rows = slice(u * r_h, u * r_h + (o_h - 1) * s_h + 1, s_h)
        for v in range(k_w):
            cols = slice(v * r_w, v * r_w + (o_w - 1) * s_w + 1, s_w)
            window = x_pad[:, rows, cols, :].reshape(n, o_h, o_w, groups, c_per_group)
            # Per group: (pixels, C_in/g) @ (C_in/g, C_out/g), batched over groups by einsum.
            path = path or _path("nhwgc,cgo->nhwgo", window, w_grouped[u, v])
            y += np.einsum("nhwgc,cgo->nhwgo", window, w_grouped[u, v], optimize=path)
    return y.reshape(n, o_h, o_w, c_out)


def _padded(x: np.ndarray, pads: PadPairs) -> np.ndarray:
    """x with zeros added per side; a negative pad crops instead (the forward convolution that a
    transposed one with output_padding is the adjoint of never reads its last pixels)."""
    (top, bottom), (left, right) = pads
    x = np.pad(x, ((0, 0), (max(top, 0), max(bottom, 0)), (max(left, 0), max(right, 0)), (0, 0)))
    h, w = x.shape[1:3]
    return x[:, max(-top, 0) : h - max(-bottom, 0), max(-left, 0) : w - max(-right, 0)]


def _path(subscripts: str, a: np.ndarray, b: np.ndarray) -> list[Any]:
    """einsum's contraction plan, made once per call: every tap has the same shapes, and planning
    costs more than contracting the small tensors of most cases."""
    return np.einsum_path(subscripts, a, b, optimize="greedy")[0]


# The backward pass. Written from the definitions, not by differentiating `conv2d_resolved`, so that
# each can catch the other: tests check the adjoint identity <conv(x, w), dy> = <x, dx> = <w, dw>.


@_IEEE
def conv2d_input_grad(dy: np.ndarray, w: np.ndarray, geo: Geometry, groups: int) -> np.ndarray:
    """dL/dx for the cotangent dy = dL/dy: a transposed, dilated correlation.

    Insert s-1 zeros between the cotangent's pixels (undoing the stride), border it with k_eff-1
    zeros, and correlate at the same rate with the kernel flipped in space and transposed in
    channels (per group); the result is the gradient of the padded input, cropped to the input.
    """
    dy = np.asarray(dy, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, o_h, o_w, c_out = dy.shape
    k_h, k_w, c_per_group, _ = w.shape
    out_per_group = c_out // groups
    (r_h, r_w), (s_h, s_w) = geo.rate, geo.stride
    e_h, e_w = geo.effective_kernel_hw
    p_h, p_w = geo.padded_hw
    (top, _), (left, _) = geo.pads
    in_h, in_w = geo.input_hw
    dx_pad = np.zeros((n, p_h, p_w, groups, c_per_group), dtype=np.float64)
    if o_h and o_w:
        spread = np.zeros((n, p_h + e_h - 1, p_w + e_w - 1, groups, out_per_group), dtype=np.float64)
        rows = slice(e_h - 1, e_h - 1 + (o_h - 1) * s_h + 1, s_h)
        cols = slice(e_w - 1, e_w - 1 + (o_w - 1) * s_w + 1, s_w)
        spread[:, rows, cols] = dy.reshape(n, o_h, o_w, groups, out_per_group)
        flipped = w[::-1, ::-1].reshape(k_h, k_w, c_per_group, groups, out_per_group)
        path = None
        for u in range(k_h):
            for v in range(k_w):
                window = spread[:, u * r_h : u * r_h + p_h, v * r_w : v * r_w + p_w]
                path = path or _path("nhwgo,cgo->nhwgc", window, flipped[u, v])
                dx_pad += np.einsum("nhwgo,cgo->nhwgc", window, flipped[u, v], optimize=path)
    return dx_pad[:, top : top + in_h, left : left + in_w].reshape(n, in_h, in_w, groups * c_per_group)


@_IEEE
def conv2d_kernel_grad(x: np.ndarray, dy: np.ndarray, geo: Geometry, groups: int) -> np.ndarray:
    """dL/dw for the cotangent dy: per kernel tap (u, v), the correlation of the padded input,
    sampled at that tap's rate offset and the stride, with the cotangent, summed over the batch
    and every output pixel (an accumulation of N * o_h * o_w products per kernel element)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    n, _, _, c_in = x.shape
    _, o_h, o_w, c_out = dy.shape
    k_h, k_w = geo.kernel_hw
    c_per_group, out_per_group = c_in // groups, c_out // groups
    (r_h, r_w), (s_h, s_w) = geo.rate, geo.stride
    x_pad = _padded(x, geo.pads)
    cotangent = dy.reshape(n, o_h, o_w, groups, out_per_group)
    dw = np.zeros((k_h, k_w, c_per_group, groups, out_per_group), dtype=np.float64)
    if o_h and o_w:
        path = None
        for u in range(k_h):
            for v in range(k_w):
                rows = slice(u * r_h, u * r_h + (o_h - 1) * s_h + 1, s_h)
                cols = slice(v * r_w, v * r_w + (o_w - 1) * s_w + 1, s_w)
                sampled = x_pad[:, rows, cols].reshape(n, o_h, o_w, groups, c_per_group)
                path = path or _path("nhwgc,nhwgo->cgo", sampled, cotangent)
                dw[u, v] = np.einsum("nhwgc,nhwgo->cgo", sampled, cotangent, optimize=path)
    return dw.reshape(k_h, k_w, c_per_group, c_out)


@_IEEE
def conv2d_transpose_resolved(y: np.ndarray, w: np.ndarray, geo: TransposedGeometry, groups: int) -> np.ndarray:
    """The transposed convolution, from its own definition: z[p] = sum y[a] w[u] over a*s + u*r - p_before = p.

    y is NHWC with C_in channels; w is the forward convolution's HWIO kernel, (k_h, k_w, C_out/g, C_in)
    (TensorFlow's conv2d_transpose filters). Each tap scatters y @ w[u, v] into a strided view of the
    full output, which is then cropped by the pads and extended by output_padding (pixels no tap
    reaches stay zero). Written by scattering, not by reusing `conv2d_input_grad`'s gathering, so
    that tests comparing the two and the adjoint identity catch either one's mistake."""
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, i_h, i_w, c_in = y.shape
    k_h, k_w, out_per_group, _ = w.shape
    in_per_group = c_in // groups
    (r_h, r_w), (s_h, s_w) = geo.rate, geo.stride
    full_h, full_w = geo.full_hw
    (top, _), (left, _) = geo.pads
    o_h, o_w = geo.output_hw
    # Room for the crops and the output_padding beyond the full output.
    room_h, room_w = max(full_h, top + o_h), max(full_w, left + o_w)
    full = np.zeros((n, room_h, room_w, groups, out_per_group), dtype=np.float64)
    grouped_y = y.reshape(n, i_h, i_w, groups, in_per_group)
    grouped_w = w.reshape(k_h, k_w, out_per_group, groups, in_per_group)
    if o_h and o_w:
        path = None
        for u in range(k_h):
            rows = slice(u * r_h, u * r_h + (i_h - 1) * s_h + 1, s_h)
            for v in range(k_w):
                cols = slice(v * r_w, v * r_w + (i_w - 1) * s_w + 1, s_w)
                path = path or _path("nhwgc,ogc->nhwgo", grouped_y, grouped_w[u, v])
                full[:, rows, cols] += np.einsum("nhwgc,ogc->nhwgo", grouped_y, grouped_w[u, v], optimize=path)
    return full[:, top : top + o_h, left : left + o_w].reshape(n, o_h, o_w, groups * out_per_group)
