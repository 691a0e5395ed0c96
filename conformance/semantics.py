"""Padding, output-size and effective-kernel math: the one place these formulas live.

Every adapter, the reference and the case validator call these functions; nothing else in
the package may re-derive a padding or an output size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

PaddingMode = Literal["SAME", "VALID"]
PadPairs = tuple[tuple[int, int], tuple[int, int]]
# What a case may say: "SAME", "VALID", one int for all four sides, or [[top, bottom], [left, right]].
PaddingSpec = PaddingMode | int | PadPairs


def pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An int or a per-axis (height, width) pair, as a pair."""
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


def effective_kernel_size(k: int, rate: int) -> int:
    """A k-tap kernel at this rate spans r*(k-1)+1 input pixels (3 taps at rate 2 cover 5)."""
    return rate * (k - 1) + 1


def same_pads(i: int, k: int, rate: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME: output ceil(i/s); the odd padding pixel goes after (bottom/right).

    Uses the *effective* kernel size; using k here is a classic porting bug.
    """
    o = math.ceil(i / stride)
    total = max((o - 1) * stride + effective_kernel_size(k, rate) - i, 0)
    before = total // 2
    return (before, total - before)


@dataclass(frozen=True)
class Geometry:
    """The fully resolved per-axis geometry of one convolution (axes: height, width)."""

    input_hw: tuple[int, int]
    kernel_hw: tuple[int, int]
    rate: tuple[int, int]
    stride: tuple[int, int]
    pads: PadPairs

    @property
    def effective_kernel_hw(self) -> tuple[int, int]:
        return (
            effective_kernel_size(self.kernel_hw[0], self.rate[0]),
            effective_kernel_size(self.kernel_hw[1], self.rate[1]),
        )

    @property
    def padded_hw(self) -> tuple[int, int]:
        return (
            self.input_hw[0] + sum(self.pads[0]),
            self.input_hw[1] + sum(self.pads[1]),
        )

    @property
    def has_valid_output(self) -> bool:
        """False when the dilated kernel does not fit in the padded input along some axis."""
        return all(p >= k for p, k in zip(self.padded_hw, self.effective_kernel_hw, strict=True))

    @property
    def output_hw(self) -> tuple[int, int]:
        """floor((i + p_before + p_after - k_eff) / s) + 1, or 0 where no position is valid."""
        out = []
        for padded, k_eff, s in zip(self.padded_hw, self.effective_kernel_hw, self.stride, strict=True):
            out.append((padded - k_eff) // s + 1 if padded >= k_eff else 0)
        return (out[0], out[1])


def taps_meeting_one_input(k: int, rate: int, stride: int) -> int:
    """At most how many kernel taps reach one input position along an axis: the input gradient's
    accumulation length per axis. Position p is read by tap u at output a when a*s + u*r = p, so
    u*r = p (mod s): the taps that qualify are every (s / gcd(r, s))-th one."""
    return -(-k // (stride // math.gcd(rate, stride)))


def resolve_pads(
    padding: PaddingSpec,
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    rate: tuple[int, int],
    stride: tuple[int, int],
) -> PadPairs:
    """Explicit ((top, bottom), (left, right)) pads for any padding a case may state."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        return (
            same_pads(input_hw[0], kernel_hw[0], rate[0], stride[0]),
            same_pads(input_hw[1], kernel_hw[1], rate[1], stride[1]),
        )
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    (top, bottom), (left, right) = padding
    return ((int(top), int(bottom)), (int(left), int(right)))


def geometry(
    padding: PaddingSpec,
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    rate: tuple[int, int],
    stride: tuple[int, int],
) -> Geometry:
    pads = resolve_pads(padding, input_hw, kernel_hw, rate, stride)
    return Geometry(input_hw=input_hw, kernel_hw=kernel_hw, rate=rate, stride=stride, pads=pads)


def is_symmetric(pads: PadPairs) -> bool:
    return pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]
