"""Padding and output-size math against the formulas of DESIGN.md section 2, checked by enumeration."""

from __future__ import annotations

import math

import pytest

from conformance.semantics import effective_kernel_size, geometry, resolve_pads, same_pads


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
                        assert geo.output_hw[0] == count_positions(i, k, r, s, before, after), (
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
    assert not geo.has_valid_output and geo.output_hw == (0, 0)
    one_larger = geometry("VALID", (6, 6), (3, 3), (3, 3), (1, 1))  # spans 7 on 6 pixels
    assert not one_larger.has_valid_output
    exactly = geometry("VALID", (5, 5), (3, 3), (2, 2), (1, 1))  # spans 5 on 5 pixels
    assert exactly.has_valid_output and exactly.output_hw == (1, 1)
    one_axis = geometry("VALID", (9, 4), (3, 3), (2, 2), (1, 1))
    assert not one_axis.has_valid_output and one_axis.output_hw == (5, 0)


def test_aspp_padding_equal_to_rate_keeps_the_size() -> None:
    for rate in (6, 12, 18):
        for size in (17, 33, 65):
            assert geometry(rate, (size, size), (3, 3), (rate, rate), (1, 1)).output_hw == (size, size)
