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

# The operations a case may name (`op`): the forward convolution and its adjoint.
CONV2D = "conv2d"
CONV_TRANSPOSE = "conv_transpose"
OPERATIONS = (CONV2D, CONV_TRANSPOSE)


def pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """An int or a per-axis (height, width) pair, as a pair."""
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


def effective_kernel_size(k: int, rate: int) -> int:
    """A k-tap kernel at this rate spans r*(k-1)+1 input pixels (3 taps at rate 2 cover 5)."""
    return rate * (k - 1) + 1


def effective_kernel_pair(kernel_hw: tuple[int, int], rate: tuple[int, int]) -> tuple[int, int]:
    return (effective_kernel_size(kernel_hw[0], rate[0]), effective_kernel_size(kernel_hw[1], rate[1]))


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
        return effective_kernel_pair(self.kernel_hw, self.rate)

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

    @property
    def unclamped_output_hw(self) -> tuple[int, int]:
        """floor((i + p_before + p_after - k_eff) / s) + 1 without the clamp at 0: how far a dilated
        kernel is from fitting. (A framework's own arithmetic may round otherwise: TensorFlow computes
        (padded - k_eff + s) / s in C++, which truncates toward zero, and raises only where that is
        negative, i.e. padded - k_eff <= -2s.)"""
        out = [
            (padded - k_eff) // s + 1
            for padded, k_eff, s in zip(self.padded_hw, self.effective_kernel_hw, self.stride, strict=True)
        ]
        return (out[0], out[1])

    @property
    def no_output_axes(self) -> tuple[int, ...]:
        """The spatial axes (0: height, 1: width) along which no output position is valid."""
        return tuple(axis for axis in range(2) if self.padded_hw[axis] < self.effective_kernel_hw[axis])


@dataclass(frozen=True)
class TransposedGeometry:
    """A transposed convolution's per-axis geometry: the adjoint of the forward convolution `forward`.

    Input pixel a reaches output position p through tap u where a*s + u*r - p_before = p: the input
    is spread out by the stride, every tap scatters its product at the rate, and the result is
    cropped by `pads` (p_before at the start, p_after at the end) and extended by `output_padding`
    at the end. Output size: (i - 1) s - (p_before + p_after) + r (k - 1) + 1 + output_padding.
    """

    input_hw: tuple[int, int]
    kernel_hw: tuple[int, int]
    rate: tuple[int, int]
    stride: tuple[int, int]
    pads: PadPairs  # what is cropped from the full (uncropped) output, per axis (before, after)
    output_padding: tuple[int, int]

    @property
    def effective_kernel_hw(self) -> tuple[int, int]:
        return effective_kernel_pair(self.kernel_hw, self.rate)

    @property
    def full_hw(self) -> tuple[int, int]:
        """The size before any crop: (i - 1) s + k_eff (0 for an empty input)."""
        sizes = [
            (i - 1) * s + k_eff if i else 0
            for i, s, k_eff in zip(self.input_hw, self.stride, self.effective_kernel_hw, strict=True)
        ]
        return (sizes[0], sizes[1])

    def _sizes(self) -> list[int]:
        return [
            full - before - after + extra
            for full, (before, after), extra in zip(self.full_hw, self.pads, self.output_padding, strict=True)
        ]

    @property
    def has_valid_output(self) -> bool:
        """False when the crops leave no output pixel along some axis."""
        return all(size > 0 for size in self._sizes())

    @property
    def no_output_axes(self) -> tuple[int, ...]:
        return tuple(axis for axis, size in enumerate(self._sizes()) if size <= 0)

    @property
    def output_hw(self) -> tuple[int, int]:
        sizes = [max(size, 0) for size in self._sizes()]
        return (sizes[0], sizes[1])

    @property
    def unclamped_output_hw(self) -> tuple[int, int]:
        """The output size without the clamp at 0: negative when the crops take more than there is."""
        sizes = self._sizes()
        return (sizes[0], sizes[1])

    @property
    def forward(self) -> Geometry:
        """The forward convolution this is the adjoint of: its input has this output's size, its pads
        are these crops, output_padding taken off the end (negative there: the forward convolution
        never reads those last pixels, which is why the transposed one leaves them zero). Its
        output has this input's size."""
        pads = tuple(
            (before, after - extra) for (before, after), extra in zip(self.pads, self.output_padding, strict=True)
        )
        return Geometry(self.output_hw, self.kernel_hw, self.rate, self.stride, pads)  # type: ignore[arg-type]


AnyGeometry = Geometry | TransposedGeometry


def as_transposed(geo: AnyGeometry) -> TransposedGeometry:
    """A transposed op's geometry, for the adapters of that op (only its cases reach them)."""
    if not isinstance(geo, TransposedGeometry):
        raise TypeError(f"a transposed convolution's target got a forward geometry: {geo}")
    return geo


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


def transposed_geometry(
    padding: PaddingSpec,
    input_hw: tuple[int, int],
    kernel_hw: tuple[int, int],
    rate: tuple[int, int],
    stride: tuple[int, int],
    output_padding: tuple[int, int] = (0, 0),
) -> TransposedGeometry:
    """A transposed convolution's geometry for any padding a case may state.

    SAME and VALID are TensorFlow's (`conv2d_transpose`, Keras' `deconv_output_length`), the
    adjoints of the forward SAME and VALID: SAME gives output i*s, cropped by the forward SAME pads
    of an input that size (the odd pixel after); VALID crops nothing and gives i*s + max(k_eff - s, 0).
    Both fix the output size, so the output_padding that reaches it is derived, never stated:
    max(s - k_eff, 0), the pixels no tap reaches when the kernel is shorter than the stride.
    Explicit pads are crops, with the stated output_padding.
    """
    if isinstance(padding, str):
        pads: list[tuple[int, int]] = []
        extra: list[int] = []
        for i, k, r, s in zip(input_hw, kernel_hw, rate, stride, strict=True):
            k_eff = effective_kernel_size(k, r)
            pads.append(same_pads(i * s, k, r, s) if padding == "SAME" else (0, 0))
            extra.append(max(s - k_eff, 0))
        return TransposedGeometry(input_hw, kernel_hw, rate, stride, (pads[0], pads[1]), (extra[0], extra[1]))
    crops = resolve_pads(padding, input_hw, kernel_hw, rate, stride)
    return TransposedGeometry(input_hw, kernel_hw, rate, stride, crops, output_padding)


def output_padding_limit(stride: int, rate: int) -> int:
    """output_padding must be below this (torch's rule: smaller than the stride or the dilation);
    beyond it the added pixels are ones no tap could reach even with a longer input."""
    return max(stride, rate)


def is_symmetric(pads: PadPairs) -> bool:
    return pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]
