"""The error map a failing record carries: where in the output the error is, small enough for a
report of 20,000 rows. Rank-free: the spatial axes are every axis but the batch and channel ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ERROR_MAP_MAX_SIDE = 48  # cells per side: enough to see a border or a stripe, small enough for 20k-row reports


def error_map(per_element: np.ndarray, quantity: str = "error/bound", layout: str = "NHWC") -> dict[str, Any]:
    """Max over the non-spatial axes (batch and channels; both channel axes of a kernel), then
    max-pooled to at most 48x48 cells over the last two spatial axes (a 3-D output's depth is
    maxed over first, a 1-D output is one row).

    `layout`: channels last, "N...C" (an input, an output: "NHWC", "NWC", "NDHWC") or a kernel,
    "...IO" ("HWIO", "WIO", "DHWIO").
    Max, not mean, at every step: one bad pixel must stay visible after downsampling.
    Non-finite cells (a NaN/Inf mismatch, or an error where the bound is zero) become null.
    """
    rank = per_element.ndim - 2
    kernel = layout.endswith("IO")
    channel_axes = (rank, rank + 1) if kernel else (0, rank + 1)
    if not per_element.size:
        plane = np.zeros((0, 0))
    else:
        spatial = per_element.max(axis=channel_axes)
        plane = spatial.reshape(1, -1) if rank == 1 else spatial.max(axis=tuple(range(rank - 2)))
    height, width = plane.shape
    block = (max(1, -(-height // ERROR_MAP_MAX_SIDE)), max(1, -(-width // ERROR_MAP_MAX_SIDE)))
    rows, cols = -(-height // block[0]), -(-width // block[1])
    padded = np.full((rows * block[0], cols * block[1]), -np.inf)
    padded[:height, :width] = plane
    pooled = padded.reshape(rows, block[0], cols, block[1]).max(axis=(1, 3))
    values = [[float(f"{v:.3g}") if np.isfinite(v) else None for v in row] for row in pooled]
    return {"quantity": quantity, "hw": [height, width], "block": list(block), "values": values}
