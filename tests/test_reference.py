"""The float64 reference against an independent loop implementation and the documents' values."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import reference
from conformance.cases import load_file, materialize
from conformance.semantics import geometry
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
        got = reference.conv2d(
            c["x"], c["w"], rate=c["rate"], stride=c["stride"], padding=c["padding"], groups=c["groups"]
        )
        want = conv2d_loops(c["x"], c["w"], c["rate"], c["stride"], geo.pads, c["groups"])
        assert got.shape == want.shape, c
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=str(c))
        with_output += got.size > 0
    assert with_output > 200  # the sample must exercise real outputs, not only empty ones


def test_reference_returns_empty_when_no_position_is_valid() -> None:
    y = reference.conv2d(np.ones((1, 4, 4, 2)), np.ones((3, 3, 2, 5)), rate=2, padding="VALID")
    assert y.shape == (1, 0, 0, 5)


def test_reference_rejects_inconsistent_groups() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        reference.conv2d(np.ones((1, 4, 4, 3)), np.ones((1, 1, 2, 4)), groups=2)


def test_reference_reproduces_every_document_example(repo) -> None:
    loaded = load_file(repo / "cases" / "documents.toml")
    assert not loaded.errors
    valued = [c for c in loaded.cases if c.expected_values is not None]
    assert len(valued) >= 9
    for case in valued:
        data = materialize(case, "float64")
        y = reference.conv2d(
            data.x, data.w, rate=case.rate, stride=case.stride, padding=case.padding, groups=case.groups
        )
        np.testing.assert_array_equal(y, case.expected_values, err_msg=case.qualified_id)


def test_reference_is_cross_correlation_not_convolution() -> None:
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    w = np.array([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1)  # picks the first tap
    np.testing.assert_array_equal(reference.conv2d(x, w, rate=(1, 2)).ravel(), [0.0])
    np.testing.assert_array_equal(reference.conv2d(x, w, rate=(1, 1)).ravel(), [0.0, 1.0, 2.0])
