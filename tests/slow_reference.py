"""An obviously-correct loop implementation of DESIGN.md's formula, for testing only.

Deliberately naive: a Python loop over every output element and every tap, reading the
unpadded input and treating out-of-range positions as zero, so it shares no code with
`conformance.reference` or `conformance.semantics` (it computes its own output size).
"""

from __future__ import annotations

import math

import numpy as np


def conv2d_loops(x, w, rate, stride, pads, groups):
    n, h, wd, _ = x.shape
    k_h, k_w, c_g, c_out = w.shape
    (r_h, r_w), (s_h, s_w) = rate, stride
    (top, bottom), (left, right) = pads
    o_h = max(0, math.floor((h + top + bottom - (r_h * (k_h - 1) + 1)) / s_h) + 1)
    o_w = max(0, math.floor((wd + left + right - (r_w * (k_w - 1) + 1)) / s_w) + 1)
    out_per_group = c_out // groups
    y = np.zeros((n, o_h, o_w, c_out))
    for b in range(n):
        for a in range(o_h):
            for col in range(o_w):
                for o in range(c_out):
                    g = o // out_per_group
                    total = 0.0
                    for u in range(k_h):
                        for v in range(k_w):
                            row = a * s_h + u * r_h - top
                            cc = col * s_w + v * r_w - left
                            if 0 <= row < h and 0 <= cc < wd:
                                for c in range(c_g):
                                    total += x[b, row, cc, g * c_g + c] * w[u, v, c, o]
                    y[b, a, col, o] = total
    return y
