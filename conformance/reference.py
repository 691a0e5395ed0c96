"""The float64 NumPy reference for dilated 2-D convolution (NHWC input, HWIO kernel).

Independent of every framework under test. It loops over the k_h*k_w kernel taps (a handful)
and never over output pixels: each tap is one strided view of the padded input and one
matrix product, so the work lands in BLAS.
"""

from __future__ import annotations

import numpy as np

from conformance.semantics import Geometry, PaddingSpec, geometry, pair


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
    (top, bottom), (left, right) = geo.pads
    x_pad = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    (r_h, r_w), (s_h, s_w) = geo.rate, geo.stride
    w_grouped = w.reshape(k_h, k_w, c_per_group, groups, out_per_group)
    for u in range(k_h):
        rows = slice(u * r_h, u * r_h + (o_h - 1) * s_h + 1, s_h)
        for v in range(k_w):
            cols = slice(v * r_w, v * r_w + (o_w - 1) * s_w + 1, s_w)
            window = x_pad[:, rows, cols, :].reshape(n, o_h, o_w, groups, c_per_group)
            # Per group: (pixels, C_in/g) @ (C_in/g, C_out/g), batched over groups by einsum.
            y += np.einsum("nhwgc,cgo->nhwgo", window, w_grouped[u, v], optimize=True)
    return y.reshape(n, o_h, o_w, c_out)
