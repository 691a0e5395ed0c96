"""Padding and output-size math against the formulas of DESIGN.md section 2, checked by enumeration."""

from __future__ import annotations

import math

import pytest

from conformance.adapters import padding
from conformance.semantics import (
    Geometry,
    effective_kernel_size,
    geometry,
    per_axis,
    resolve_pads,
    same_pads,
    transposed_geometry,
)


def count_positions(i: int, k: int, r: int, s: int, before: int, after: int) -> int:
    """Output positions by brute force: window starts whose dilated taps all land in the padded input."""
    padded = i + before + after
    return sum(1 for start in range(0, padded, s) if start + r * (k - 1) < padded)


@pytest.mark.parametrize(("k", "r", "expected"), [(3, 1, 3), (3, 2, 5), (3, 6, 13), (2, 3, 4), (1, 7, 1), (5, 1, 5)])
def test_effective_kernel(k: int, r: int, expected: int) -> None:
    assert effective_kernel_size(k, r) == expected


def test_explicit_padding_output_size_matches_enumeration() -> None:
    for i in range(1, 12):
        for k in range(1, 5):
            for r in range(1, 4):
                for s in range(1, 4):
                    for before, after in [(0, 0), (1, 1), (0, 2), (3, 1), (6, 6)]:
                        geo = geometry(((before, after), (0, 0)), (i, 5), (k, 1), (r, 1), (s, 1))
                        assert geo.output_size[0] == count_positions(i, k, r, s, before, after), (
                            i,
                            k,
                            r,
                            s,
                            before,
                            after,
                        )


def test_same_gives_ceil_and_puts_the_odd_pixel_after() -> None:
    for i in range(1, 15):
        for k in range(1, 6):
            for r in range(1, 5):
                for s in range(1, 4):
                    before, after = same_pads(i, k, r, s)
                    total = before + after
                    assert before == total // 2 and after - before in (0, 1)
                    k_eff = r * (k - 1) + 1
                    assert total == max((math.ceil(i / s) - 1) * s + k_eff - i, 0)
                    assert count_positions(i, k, r, s, before, after) == math.ceil(i / s)


def test_even_effective_kernel_pads_asymmetrically() -> None:
    # 2 taps at rate 3 span 4 pixels: 3 pixels of padding, 1 before and 2 after.
    assert same_pads(7, 2, 3, 1) == (1, 2)
    # 4x4 kernel at rate 1 on 5 pixels: same story, the classic even-kernel case.
    assert same_pads(5, 4, 1, 1) == (1, 2)


def test_same_uses_the_effective_kernel_not_k() -> None:
    # Using k=3 instead of k_eff=5 would give (1, 1): the porting bug DESIGN.md warns about.
    assert same_pads(4, 3, 2, 1) == (2, 2)


def test_padding_spellings() -> None:
    args = ((6, 7), (3, 3), (2, 2), (1, 1))
    assert resolve_pads("VALID", *args) == ((0, 0), (0, 0))
    assert resolve_pads(2, *args) == ((2, 2), (2, 2))
    assert resolve_pads(((0, 3), (2, 1)), *args) == ((0, 3), (2, 1))
    assert resolve_pads("SAME", *args) == ((2, 2), (2, 2))


def test_no_valid_output_when_the_dilated_kernel_does_not_fit() -> None:
    geo = geometry("VALID", (4, 4), (3, 3), (2, 2), (1, 1))
    assert not geo.has_valid_output and geo.output_size == (0, 0)
    one_larger = geometry("VALID", (6, 6), (3, 3), (3, 3), (1, 1))  # spans 7 on 6 pixels
    assert not one_larger.has_valid_output
    exactly = geometry("VALID", (5, 5), (3, 3), (2, 2), (1, 1))  # spans 5 on 5 pixels
    assert exactly.has_valid_output and exactly.output_size == (1, 1)
    one_axis = geometry("VALID", (9, 4), (3, 3), (2, 2), (1, 1))
    assert not one_axis.has_valid_output and one_axis.output_size == (5, 0)


def test_aspp_padding_equal_to_rate_keeps_the_size() -> None:
    for rate in (6, 12, 18):
        for size in (17, 33, 65):
            assert geometry(rate, (size, size), (3, 3), (rate, rate), (1, 1)).output_size == (size, size)


# Rank is data: the same formulas per spatial axis for 1-D and 3-D convolutions (DESIGN.md section 8).


def test_one_dimensional_geometry_matches_enumeration() -> None:
    for i in range(1, 10):
        for k in range(1, 4):
            for r in range(1, 4):
                for s in range(1, 3):
                    for before, after in [(0, 0), (2, 1), ((k - 1) * r, 0)]:  # the last: causal padding
                        geo = geometry(((before, after),), (i,), (k,), (r,), (s,))
                        assert geo.output_size == (count_positions(i, k, r, s, before, after),)
                    same = geometry("SAME", (i,), (k,), (r,), (s,))
                    assert same.pads == (same_pads(i, k, r, s),) and same.output_size == (math.ceil(i / s),)


def test_causal_padding_keeps_the_length_at_stride_one() -> None:
    """Keras' Conv1D(padding="causal") is explicit padding ((k-1)*r, 0): o = i, and y[t] sees x[<= t]."""
    geo = geometry((((3 - 1) * 4, 0),), (16,), (3,), (4,), (1,))
    assert geo.output_size == (16,) and geo.effective_kernel == (9,) and geo.padded_size == (24,)


def test_three_dimensional_geometry_is_three_independent_axes() -> None:
    sizes, kernel, rate, stride = (5, 9, 4), (3, 2, 3), (2, 3, 1), (1, 2, 3)
    for stated in ("SAME", "VALID", 2, ((1, 0), (0, 3), (2, 2))):
        geo = geometry(stated, sizes, kernel, rate, stride)
        assert geo.rank == 3 and len(geo.pads) == 3
        for axis in range(3):
            alone = geometry(
                stated if isinstance(stated, (str, int)) else (stated[axis],),
                (sizes[axis],),
                (kernel[axis],),
                (rate[axis],),
                (stride[axis],),
            )
            assert geo.pads[axis] == alone.pads[0] and geo.output_size[axis] == alone.output_size[0], (stated, axis)
    assert geometry("SAME", sizes, kernel, rate, stride).pads == ((2, 2), (1, 2), (1, 1))
    assert geometry("SAME", sizes, kernel, rate, stride).output_size == (5, 5, 2)
    assert geometry("VALID", sizes, kernel, rate, stride).output_size == (1, 3, 1)
    # Only the middle axis is too short for its dilated kernel (4 taps at rate 3 span 10 > 9).
    short = geometry("VALID", (5, 9, 4), (1, 4, 1), (1, 3, 1), (1, 1, 1))
    assert short.no_output_axes == (1,) and short.output_size == (5, 0, 4) and not short.has_valid_output
    assert short.unclamped_output_size == (5, 0, 4)


def test_transposed_sizes_in_one_and_three_dimensions() -> None:
    for i, k, r, s in [(5, 3, 2, 2), (4, 1, 1, 3), (7, 2, 3, 1)]:
        k_eff = effective_kernel_size(k, r)
        assert transposed_geometry("SAME", (i,), (k,), (r,), (s,)).output_size == (i * s,)
        assert transposed_geometry("VALID", (i,), (k,), (r,), (s,)).output_size == (i * s + max(k_eff - s, 0),)
    geo = transposed_geometry(((1, 0), (0, 0), (2, 1)), (3, 4, 5), (3, 2, 3), (1, 2, 1), (2, 1, 3), (1, 0, 2))
    # (i - 1) s + k_eff - crops + output_padding per axis: 4 + 3 - 1 + 1, 3 + 3 - 0 + 0, 12 + 3 - 3 + 2.
    assert geo.full_size == (7, 6, 15) and geo.output_size == (7, 6, 14)
    assert geo.forward.output_size == geo.input_size
    assert transposed_geometry(1, (3,), (3,), (1,), (1,)).output_padding == (0,)  # none stated: none on each axis


def test_per_axis_values_and_their_mistakes() -> None:
    assert per_axis(2, 1) == (2,) and per_axis(2, 3) == (2, 2, 2) and per_axis([1, 2, 3], 3) == (1, 2, 3)
    with pytest.raises(ValueError, match="expected one per spatial axis"):
        per_axis([2, 3], 3)
    with pytest.raises(ValueError, match="states 2 axes; the input has 3"):
        resolve_pads(((1, 1), (1, 1)), (4, 4, 4), (3, 3, 3), (1, 1, 1), (1, 1, 1))
    with pytest.raises(ValueError, match="spatial axes"):
        Geometry((4, 4), (3,), (1, 1), (1, 1), ((0, 0), (0, 0)))


def test_padding_spellings_per_api_in_every_rank() -> None:
    two = ((1, 2), (3, 4))
    assert padding.channels_last_pairs(two) == [[0, 0], [1, 2], [3, 4], [0, 0]]
    assert padding.channels_first_pairs(two) == [[0, 0], [0, 0], [1, 2], [3, 4]]
    assert padding.begins_then_ends(two) == [1, 3, 2, 4]  # ONNX: [top, left, bottom, right]
    assert padding.last_axis_first(two) == [3, 4, 1, 2]  # F.pad: [left, right, top, bottom]
    assert padding.spatial_pairs(two) == [(1, 2), (3, 4)]
    three = ((1, 2), (3, 4), (5, 6))
    assert padding.channels_last_pairs(three) == [[0, 0], [1, 2], [3, 4], [5, 6], [0, 0]]
    assert padding.begins_then_ends(three) == [1, 3, 5, 2, 4, 6]
    assert padding.last_axis_first(three) == [5, 6, 3, 4, 1, 2]
    one = ((2, 0),)
    assert padding.channels_first_pairs(one) == [[0, 0], [0, 0], [2, 0]] and padding.last_axis_first(one) == [2, 0]
    assert padding.torch_arguments(((1, 1), (2, 2), (0, 0)), ((1, 1), (2, 2), (0, 0))) == ((1, 2, 0), None)
    assert padding.torch_arguments(one, one) == ((0,), [2, 0])
    assert padding.torch_same_refusal("SAME", (1, 1, 1)) is None
    assert padding.torch_same_refusal("SAME", (1, 2, 1)) is not None
    geo = transposed_geometry("SAME", (4,), (4,), (1,), (1,))  # an odd total crop: (1, 2)
    assert isinstance(padding.torch_transpose_arguments(geo), str)
    assert padding.dilated_input_pads(geo) == [(2, 1)]
