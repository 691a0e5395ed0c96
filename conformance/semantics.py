"""Padding, output-size and effective-kernel math: the one place these formulas live.

Every adapter, the reference and the case validator call these functions; nothing else in
the package may re-derive a padding or an output size.

Rank is data: every formula holds per spatial axis (DESIGN.md section 8), so a geometry holds one
value per spatial axis in tuples of any length, (height, width) for a 2-D convolution, (time,) for
a 1-D one, (depth, height, width) for a 3-D one. Nothing here assumes two axes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Literal

PaddingMode = Literal["SAME", "VALID", "CAUSAL"]
# The words a case may use for its padding. CAUSAL (forward op only) pads k_eff - 1 before each axis
# and nothing after: output t reads inputs up to t, never later (Keras' Conv1D padding="causal",
# WaveNet's and TCN's dilated 1-D convolutions). At stride 1 the output keeps the input's length.
PADDING_WORDS = ("SAME", "VALID", "CAUSAL")
Sizes = tuple[int, ...]  # one value per spatial axis
PadPairs = tuple[tuple[int, int], ...]  # (before, after) per spatial axis
# What a case may say: "SAME", "VALID", "CAUSAL", one int for every side of every axis, or one (before, after)
# pair per spatial axis ([[top, bottom], [left, right]] in 2-D).
PaddingSpec = PaddingMode | int | PadPairs

# The operations a case may name (`op`): the forward convolution and its adjoint, whatever the rank
# (the API an adapter calls for them, `conv2d` or `Conv`, is the adapter's own name).
CONV = "conv"
CONV_TRANSPOSE = "conv_transpose"
OPERATIONS = (CONV, CONV_TRANSPOSE)
# The forward op's name before operations were rank-free: case files and results written then say it.
FORMER_NAMES = {"conv2d": CONV}


def operation_named(name: str) -> str:
    """The operation a case file or a record names, under its present name."""
    return FORMER_NAMES.get(name, name)


def per_axis(value: int | Sequence[int], rank: int) -> Sizes:
    """An int (the same on every axis) or one value per spatial axis, as a tuple of `rank` ints.

    Raises ValueError when a sequence has another length: a rate of [2, 3] on a 3-D convolution is a
    mistake to report, not to broadcast."""
    if isinstance(value, int):
        return (value,) * rank
    values = tuple(int(v) for v in value)
    if len(values) != rank:
        raise ValueError(f"{list(values)} has {len(values)} values; expected one per spatial axis ({rank})")
    return values


def effective_kernel_size(k: int, rate: int) -> int:
    """A k-tap kernel at this rate spans r*(k-1)+1 input pixels (3 taps at rate 2 cover 5)."""
    return rate * (k - 1) + 1


def same_pads(i: int, k: int, rate: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME along one axis: output ceil(i/s); the odd padding pixel goes after (at the
    end of the axis: bottom or right in 2-D).

    Uses the *effective* kernel size; using k here is a classic porting bug.
    """
    o = math.ceil(i / stride)
    total = max((o - 1) * stride + effective_kernel_size(k, rate) - i, 0)
    before = total // 2
    return (before, total - before)


def _check_rank(geo: _Axes, named: Mapping[str, Sized]) -> None:
    """Every per-axis field states the same number of axes: a mismatch would otherwise surface as a
    zip error deep in some property, far from the code that built the geometry."""
    rank = len(geo.input_size)
    if all(len(value) == rank for value in named.values()):
        return
    wrong = {name: len(value) for name, value in named.items() if len(value) != rank}
    raise ValueError(f"{geo}: input_size has {rank} spatial axes but {wrong} (name: axes) do not")


# Geometries are frozen, so the derived sizes are computed once each (sweeps and the loader read them
# for every combination and case): `cached_property` writes past the frozen __setattr__, and eq and
# hash see the fields only.


@dataclass(frozen=True)
class _Axes:
    """What both geometries state per spatial axis, one entry per axis in every field."""

    input_size: Sizes
    kernel_size: Sizes
    rate: Sizes
    stride: Sizes
    pads: PadPairs

    def __post_init__(self) -> None:
        named = {name: getattr(self, name) for name in (f.name for f in fields(self)) if name != "input_size"}
        _check_rank(self, named)

    @property
    def rank(self) -> int:
        """The number of spatial axes."""
        return len(self.input_size)

    @cached_property
    def effective_kernel(self) -> Sizes:
        """k_eff per axis: what each axis of the dilated kernel spans (`effective_kernel_size`)."""
        return tuple(effective_kernel_size(k, r) for k, r in zip(self.kernel_size, self.rate, strict=True))


@dataclass(frozen=True)
class Geometry(_Axes):
    """The fully resolved per-axis geometry of one convolution."""

    @cached_property
    def padded_size(self) -> Sizes:
        return tuple(i + before + after for i, (before, after) in zip(self.input_size, self.pads, strict=True))

    @cached_property
    def unclamped_output_size(self) -> Sizes:
        """floor((i + p_before + p_after - k_eff) / s) + 1 without the clamp at 0: how far a dilated
        kernel is from fitting. (A framework's own arithmetic may round otherwise: TensorFlow computes
        (padded - k_eff + s) / s in C++, which truncates toward zero, and raises only where that is
        negative, i.e. padded - k_eff <= -2s.)"""
        return tuple(
            (padded - k_eff) // s + 1
            for padded, k_eff, s in zip(self.padded_size, self.effective_kernel, self.stride, strict=True)
        )

    @cached_property
    def output_size(self) -> Sizes:
        """floor((i + p_before + p_after - k_eff) / s) + 1, or 0 where no position is valid (where the
        padded input is shorter than k_eff, which is where that floor is at most 0)."""
        return tuple(max(size, 0) for size in self.unclamped_output_size)

    @property
    def has_valid_output(self) -> bool:
        """False when the dilated kernel does not fit in the padded input along some axis."""
        return all(self.output_size)

    @property
    def no_output_axes(self) -> tuple[int, ...]:
        """The spatial axes (0 first: height, then width in 2-D) along which no output position is valid."""
        return tuple(axis for axis, size in enumerate(self.output_size) if not size)


@dataclass(frozen=True)
class TransposedGeometry(_Axes):
    """A transposed convolution's per-axis geometry: the adjoint of the forward convolution `forward`.

    Input pixel a reaches output position p through tap u where a*s + u*r - p_before = p: the input
    is spread out by the stride, every tap scatters its product at the rate, and the result is
    cropped by `pads` (p_before at the start, p_after at the end) and extended by `output_padding`
    at the end. Output size: (i - 1) s - (p_before + p_after) + r (k - 1) + 1 + output_padding.
    """

    # (its pads are what is cropped from the full, uncropped output, per axis (before, after))
    output_padding: Sizes

    @cached_property
    def full_size(self) -> Sizes:
        """The size before any crop: (i - 1) s + k_eff (0 for an empty input)."""
        return tuple(
            (i - 1) * s + k_eff if i else 0
            for i, s, k_eff in zip(self.input_size, self.stride, self.effective_kernel, strict=True)
        )

    @cached_property
    def unclamped_output_size(self) -> Sizes:
        """The output size without the clamp at 0: negative when the crops take more than there is."""
        return tuple(
            full - before - after + extra
            for full, (before, after), extra in zip(self.full_size, self.pads, self.output_padding, strict=True)
        )

    @cached_property
    def output_size(self) -> Sizes:
        return tuple(max(size, 0) for size in self.unclamped_output_size)

    @property
    def has_valid_output(self) -> bool:
        """False when the crops leave no output pixel along some axis."""
        return all(self.output_size)

    @property
    def no_output_axes(self) -> tuple[int, ...]:
        return tuple(axis for axis, size in enumerate(self.output_size) if not size)

    @property
    def forward(self) -> Geometry:
        """The forward convolution this is the adjoint of: its input has this output's size, its pads
        are these crops, output_padding taken off the end (negative there: the forward convolution
        never reads those last pixels, which is why the transposed one leaves them zero). Its
        output has this input's size."""
        pads = tuple(
            (before, after - extra) for (before, after), extra in zip(self.pads, self.output_padding, strict=True)
        )
        return Geometry(self.output_size, self.kernel_size, self.rate, self.stride, pads)


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


def resolve_pads(padding: PaddingSpec, input_size: Sizes, kernel_size: Sizes, rate: Sizes, stride: Sizes) -> PadPairs:
    """Explicit (before, after) pads per spatial axis for any padding a case may state
    (((top, bottom), (left, right)) in 2-D)."""
    rank = len(input_size)
    if padding == "VALID":
        return ((0, 0),) * rank
    if padding == "SAME":
        return tuple(same_pads(i, k, r, s) for i, k, r, s in zip(input_size, kernel_size, rate, stride, strict=True))
    if padding == "CAUSAL":
        return tuple((effective_kernel_size(k, r) - 1, 0) for k, r in zip(kernel_size, rate, strict=True))
    if isinstance(padding, int):
        return ((padding, padding),) * rank
    pads = tuple((int(before), int(after)) for before, after in padding)
    if len(pads) != rank:
        raise ValueError(f"padding {[list(p) for p in pads]} states {len(pads)} axes; the input has {rank}")
    return pads


def geometry(padding: PaddingSpec, input_size: Sizes, kernel_size: Sizes, rate: Sizes, stride: Sizes) -> Geometry:
    pads = resolve_pads(padding, input_size, kernel_size, rate, stride)
    return Geometry(input_size=input_size, kernel_size=kernel_size, rate=rate, stride=stride, pads=pads)


def transposed_geometry(
    padding: PaddingSpec,
    input_size: Sizes,
    kernel_size: Sizes,
    rate: Sizes,
    stride: Sizes,
    output_padding: Sizes | None = None,
) -> TransposedGeometry:
    """A transposed convolution's geometry for any padding a case may state (`output_padding`: none
    on every axis when not given).

    SAME and VALID are TensorFlow's (`conv2d_transpose`, Keras' `deconv_output_length`), the
    adjoints of the forward SAME and VALID: SAME gives output i*s, cropped by the forward SAME pads
    of an input that size (the odd pixel after); VALID crops nothing and gives i*s + max(k_eff - s, 0).
    Both fix the output size, so the output_padding that reaches it is derived, never stated:
    max(s - k_eff, 0), the pixels no tap reaches when the kernel is shorter than the stride.
    Explicit pads are crops, with the stated output_padding. CAUSAL is the forward op's only: no
    framework defines a causal transposed convolution (Keras' Conv1DTranspose refuses the word).
    """
    if padding == "CAUSAL":
        raise ValueError("CAUSAL padding is the forward convolution's; a transposed one states its crops")
    if isinstance(padding, str):
        pads: list[tuple[int, int]] = []
        extra: list[int] = []
        for i, k, r, s in zip(input_size, kernel_size, rate, stride, strict=True):
            k_eff = effective_kernel_size(k, r)
            pads.append(same_pads(i * s, k, r, s) if padding == "SAME" else (0, 0))
            extra.append(max(s - k_eff, 0))
        return TransposedGeometry(input_size, kernel_size, rate, stride, tuple(pads), tuple(extra))
    crops = resolve_pads(padding, input_size, kernel_size, rate, stride)
    stated = output_padding if output_padding is not None else (0,) * len(input_size)
    return TransposedGeometry(input_size, kernel_size, rate, stride, crops, stated)


def output_padding_limit(stride: int, rate: int) -> int:
    """output_padding must be below this (torch's rule: smaller than the stride or the dilation);
    beyond it the added pixels are ones no tap could reach even with a longer input."""
    return max(stride, rate)


def is_symmetric(pads: PadPairs) -> bool:
    """Whether every axis pads as much before as after (what APIs with one pad per axis can state)."""
    return all(before == after for before, after in pads)
