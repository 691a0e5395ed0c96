"""The documents' composite claims hold for the exact computation, and a framework that gets a
layer wrong is caught by the composite check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance import composite_checks, composites, reference
from conformance.adapters import ConvCall, Target
from conformance.adapters.numpy import NumpyIm2col


@pytest.fixture
def loaded(repo: Path) -> list[composites.Composite]:
    found, errors = composites.load(repo / "cases" / composites.FILE_NAME, "cases/composites.toml")
    assert not errors
    return found


def test_the_documents_receptive_field_claims_hold(loaded: list[composites.Composite]) -> None:
    stacks = [c for c in loaded if c.kind == "stack"]
    assert {c.id for c in stacks} >= {"hdc-1-2-3", "gridding-2-2-2", "hdc-1-2-5"}
    for stack in stacks:
        side, holes = composites.field_facts(composites.stack_paths(stack, composites.reference_conv))
        assert (side, holes) == (stack.receptive_field, stack.holes), stack.id


def test_gridding_reaches_only_even_offsets() -> None:
    stack = composites.Composite("stack", "g", "", "", (2, 2, 2))
    paths = composites.stack_paths(stack, composites.reference_conv)
    centre = paths.shape[0] // 2
    rows, cols = np.nonzero(paths)
    assert set((rows - centre) % 2) == {0} and set((cols - centre) % 2) == {0}
    assert len(rows) == 49  # a 7x7 checkerboard inside the 13x13 span


class IgnoresRate(NumpyIm2col):
    """Computes every layer at rate 1: the classic adapter bug a composite must expose."""

    op = "ignores_rate"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        y = reference.conv(call.x.astype(np.float64), call.w.astype(np.float64), rate=(1, 1), stride=(1, 1),
                             padding="SAME", groups=1)  # fmt: skip
        return y.astype(call.x.dtype)


class AnswersInFloat64(NumpyIm2col):
    """Right values in a dtype the composite did not ask for (the way Keras on JAX answers float64
    in float32): the composite check says so instead of comparing values only."""

    op = "answers_in_float64"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        return super().run(call, device, precision).astype(np.float64)


@pytest.mark.parametrize("composite_id", ["hdc-1-2-3", "aspp-6-12-18", "unet-bottleneck-rate2"])
def test_a_wrong_layer_is_a_mismatch(loaded: list[composites.Composite], composite_id: str) -> None:
    composite = next(c for c in loaded if c.id == composite_id)
    case = composite.as_case("cases/composites.toml")
    numpy_target = Target(NumpyIm2col(), "cpu", "strict")
    good: dict[str, Any] = composite_checks.run_check(composite, case, numpy_target, "float32")
    assert good["outcome"] == "pass", good["message"]
    bad = composite_checks.run_check(composite, case, Target(IgnoresRate(), "cpu", "strict"), "float32")
    assert bad["outcome"] == "mismatch" and "differ from the exact result" in bad["message"]
    if composite.kind == "stack":
        assert good["error_map"]["kind"] == "coverage"
        assert bad["error_map"]["values"] != good["error_map"]["values"]  # the wrong field is drawn as computed
    wrong_dtype = composite_checks.run_check(composite, case, Target(AnswersInFloat64(), "cpu", "strict"), "float32")
    assert wrong_dtype["outcome"] == "shape" and "output dtype float64, expected float32" in wrong_dtype["message"]


def test_the_bottleneck_is_two_relu_layers_and_kernels_come_in_layer_order(
    loaded: list[composites.Composite],
) -> None:
    bottleneck = next(c for c in loaded if c.kind == "bottleneck")
    x = composites.composite_input(bottleneck)
    first, second = composites.kernels(bottleneck)
    by_hand = np.maximum(composites.reference_conv(np.maximum(composites.reference_conv(x, first, 2), 0), second, 2), 0)
    built = composites.build(bottleneck, composites.LayerByLayer(composites.reference_conv), x)
    np.testing.assert_array_equal(built, by_hand)
    assert by_hand.min() == 0 and by_hand.max() > 0 and (by_hand == np.round(by_hand)).all()
    assert len(composites.kernels(next(c for c in loaded if c.kind == "aspp"))) == 6  # 1x1, three rates, pool, merge


@pytest.mark.parametrize("composite_id", ["gridding-2-2-2", "aspp-6-12-18"])
def test_the_reproduction_repeats_the_first_call(loaded: list[composites.Composite], composite_id: str) -> None:
    composite = next(c for c in loaded if c.id == composite_id)
    record = composite_checks.run_check(
        composite, composite.as_case("cases/composites.toml"), Target(NumpyIm2col(), "cpu", "strict"), "float64"
    )
    namespace: dict[str, Any] = {}
    exec(record["reproduction"], namespace)
    input_spec, kernel_spec, input_shape, kernel_shape, rate = composite.first_layer()
    x, w = composites.generate(input_spec, input_shape), composites.generate(kernel_spec, kernel_shape)
    np.testing.assert_array_equal(namespace["y"], composites.reference_conv(x, w, rate))
