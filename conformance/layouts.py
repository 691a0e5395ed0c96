"""The axis orders of the layouts frameworks take, for any number of spatial axes: the one place these
permutations are written (an adapter's transposes, a model reader's weights).

The suite's own layouts are channels last: the input (N, *spatial, C), the kernel (*spatial, I, O):
NHWC and HWIO in 2-D. Each function is the permutation (`transpose`'s axes) from one layout to another.
"""

from __future__ import annotations


def channels_first(rank: int) -> tuple[int, ...]:
    """(N, *spatial, C) -> (N, C, *spatial): NHWC -> NCHW in 2-D."""
    return (0, rank + 1, *range(1, rank + 1))


def channels_last(rank: int) -> tuple[int, ...]:
    """(N, C, *spatial) -> (N, *spatial, C): NCHW -> NHWC in 2-D."""
    return (0, *range(2, rank + 2), 1)


def out_in_first(rank: int) -> tuple[int, ...]:
    """A kernel (*spatial, I, O) -> (O, I, *spatial): HWIO -> OIHW in 2-D (torch's and ONNX's weights)."""
    return (rank + 1, rank, *range(rank))


def spatial_first(rank: int) -> tuple[int, ...]:
    """A weight (O, I, *spatial) -> (*spatial, I, O): OIHW -> HWIO in 2-D."""
    return (*range(2, rank + 2), 1, 0)
