"""The float64 reference against an independent loop implementation and the documents' values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conformance import reference
from conformance.cases import load_file, materialize
from conformance.semantics import geometry, transposed_geometry
from tests.slow_reference import conv2d_loops


def random_configuration(rng: np.random.Generator) -> dict:
    groups = int(rng.choice([1, 1, 2, 3]))
    c_g = int(rng.integers(1, 3))
    out_per_group = int(rng.integers(1, 3))
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    rate = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    hw = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
    padding_kind = rng.integers(0, 4)
    if padding_kind == 0:
        padding = "SAME"
    elif padding_kind == 1:
        padding = "VALID"
    elif padding_kind == 2:
        padding = int(rng.integers(0, 4))
    else:
        padding = (
            (int(rng.integers(0, 4)), int(rng.integers(0, 4))),
            (int(rng.integers(0, 4)), int(rng.integers(0, 4))),
        )
    x = rng.standard_normal((int(rng.integers(1, 3)), *hw, c_g * groups))
    w = rng.standard_normal((*k, c_g, out_per_group * groups))
    return {"x": x, "w": w, "rate": rate, "stride": stride, "padding": padding, "groups": groups}


def test_reference_matches_the_loop_implementation_on_random_cases() -> None:
    rng = np.random.default_rng(20261123)
    with_output = 0
    for _ in range(300):
        c = random_configuration(rng)
        geo = geometry(c["padding"], c["x"].shape[1:3], c["w"].shape[:2], c["rate"], c["stride"])
        got = reference.conv(
            c["x"], c["w"], rate=c["rate"], stride=c["stride"], padding=c["padding"], groups=c["groups"]
        )
        want = conv2d_loops(c["x"], c["w"], c["rate"], c["stride"], geo.pads, c["groups"])
        assert got.shape == want.shape, c
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=str(c))
        with_output += got.size > 0
    assert with_output > 200  # the sample must exercise real outputs, not only empty ones


def test_reference_returns_empty_when_no_position_is_valid() -> None:
    y = reference.conv(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 5)), rate=2, padding="VALID")
    assert y.shape == (1, 0, 0, 5)


def test_reference_rejects_inconsistent_groups() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        reference.conv(np.ones((1, 4, 4, 3)), np.ones((1, 1, 2, 4)), groups=2)


def test_reference_reproduces_every_document_example(repo) -> None:
    loaded = load_file(repo / "cases" / "documents.toml")
    assert not loaded.errors
    valued = [c for c in loaded.cases if c.expected_values is not None]
    assert len(valued) >= 9
    for case in valued:
        data = materialize(case, "float64")
        y = reference.conv(data.x, data.w, rate=case.rate, stride=case.stride, padding=case.padding, groups=case.groups)
        np.testing.assert_array_equal(y, case.expected_values, err_msg=case.qualified_id)


def test_reference_is_cross_correlation_not_convolution() -> None:
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    w = np.array([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)  # picks the first tap
    np.testing.assert_array_equal(reference.conv(x, w, rate=(1, 2)).ravel(), [0.0])
    np.testing.assert_array_equal(reference.conv(x, w, rate=(1, 1)).ravel(), [0.0, 1.0, 2.0])


# Rank is data: the reference of any rank against a naive loop of its own, and against 2-D through a unit axis.


def conv_loops_any_rank(x, w, rate, stride, pads, groups):
    """DESIGN.md's sum, element by element and tap by tap, for any number of spatial axes (reads the
    unpadded input, out-of-range positions as zero, and computes its own output size)."""
    n, *size, _ = x.shape
    *kernel, c_g, c_out = w.shape
    out = [
        max(0, (i + before + after - (r * (k - 1) + 1)) // s + 1)
        for i, k, r, s, (before, after) in zip(size, kernel, rate, stride, pads, strict=True)
    ]
    out_per_group = c_out // groups
    y = np.zeros((n, *out, c_out))
    for index in itertools.product(range(n), *(range(o) for o in out), range(c_out)):
        b, position, o = index[0], index[1:-1], index[-1]
        g = o // out_per_group
        total = 0.0
        for tap in itertools.product(*(range(k) for k in kernel)):
            at = [
                p * s + u * r - before
                for p, u, r, s, (before, _) in zip(position, tap, rate, stride, pads, strict=True)
            ]
            if all(0 <= a < i for a, i in zip(at, size, strict=True)):
                for c in range(c_g):
                    total += x[(b, *at, g * c_g + c)] * w[(*tap, c, o)]
        y[index] = total
    return y


def random_any_rank(rng: np.random.Generator, rank: int) -> dict:
    groups = int(rng.choice([1, 2]))

    def pick(low: int, high: int) -> tuple[int, ...]:
        return tuple(int(v) for v in rng.integers(low, high, rank))

    explicit = tuple((int(before), int(after)) for before, after in rng.integers(0, 3, (rank, 2)))
    padding = ["SAME", "VALID", int(rng.integers(0, 3)), explicit][int(rng.integers(0, 4))]
    x = rng.integers(-3, 4, (2, *pick(1, 7), groups * int(rng.integers(1, 3)))).astype(np.float64)
    w = rng.integers(-3, 4, (*pick(1, 4), x.shape[-1] // groups, groups * int(rng.integers(1, 3)))).astype(np.float64)
    return {"x": x, "w": w, "rate": pick(1, 3), "stride": pick(1, 3), "padding": padding, "groups": groups}


@pytest.mark.parametrize("rank", [1, 3])
def test_reference_of_another_rank_matches_its_loops(rank: int) -> None:
    rng = np.random.default_rng(rank)
    with_output = 0
    for _ in range(40 if rank == 3 else 150):
        c = random_any_rank(rng, rank)
        geo = geometry(c["padding"], c["x"].shape[1:-1], c["w"].shape[:-2], c["rate"], c["stride"])
        got = reference.conv(
            c["x"], c["w"], rate=c["rate"], stride=c["stride"], padding=c["padding"], groups=c["groups"]
        )
        want = conv_loops_any_rank(c["x"], c["w"], c["rate"], c["stride"], geo.pads, c["groups"])
        assert got.shape == want.shape, c
        np.testing.assert_array_equal(got, want, err_msg=str(c))  # integers: exact
        with_output += got.size > 0
    assert with_output > (20 if rank == 3 else 100)


def test_one_and_three_dimensions_through_a_unit_axis_are_the_two_dimensional_reference() -> None:
    """A 1-D convolution is a 2-D one of height 1; a 3-D one of depth 1 (kernel depth 1) is a 2-D one."""
    rng = np.random.default_rng(11)
    for _ in range(60):
        for rank, outer_rate, outer_stride in ((1, 1, 1), (2, 3, 2)):  # (the unit axis' rate and stride are free)
            c = random_any_rank(rng, rank)
            pads = geometry(c["padding"], c["x"].shape[1:-1], c["w"].shape[:-2], c["rate"], c["stride"]).pads
            low = reference.conv(c["x"], c["w"], rate=c["rate"], stride=c["stride"], padding=pads, groups=c["groups"])
            high = reference.conv(
                c["x"][:, None], c["w"][None], rate=(outer_rate, *c["rate"]), stride=(outer_stride, *c["stride"]),
                padding=((0, 0), *pads), groups=c["groups"],
            )  # fmt: skip
            np.testing.assert_array_equal(low, high[:, 0], err_msg=str(c))


@pytest.mark.parametrize("rank", [1, 3])
def test_backward_and_transposed_references_of_another_rank_are_adjoints(rank: int) -> None:
    """<conv(x, w), dy> = <x, dx> = <w, dw>, and the transposed scatter equals the input gradient's
    gather, exactly on integers, in 1-D and 3-D."""
    rng = np.random.default_rng(20 + rank)
    compared = 0
    for _ in range(60):
        c = random_any_rank(rng, rank)
        x, w, groups = c["x"], c["w"], c["groups"]
        geo = geometry(c["padding"], x.shape[1:-1], w.shape[:-2], c["rate"], c["stride"])
        y = reference.conv_resolved(x, w, geo, groups)
        dy = rng.integers(-3, 4, y.shape).astype(np.float64)
        dx, dw = reference.conv_input_grad(dy, w, geo, groups), reference.conv_kernel_grad(x, dy, geo, groups)
        assert dx.shape == x.shape and dw.shape == w.shape
        assert (y * dy).sum() == (x * dx).sum() == (w * dw).sum(), c
        crops = transposed_geometry(geo.pads, y.shape[1:-1], geo.kernel_size, geo.rate, geo.stride)
        if crops.has_valid_output and crops.output_size == geo.input_size:
            np.testing.assert_array_equal(reference.conv_transpose_resolved(dy, w, crops, groups), dx)
            compared += 1
    assert compared > 10
