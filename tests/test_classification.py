"""Outcome classification end to end through `run_check`, with deliberately broken fake adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance import reference
from conformance.adapters import Adapter, ConvCall, Target, Unavailable
from conformance.adapters.numpy import NumpyIm2col
from conformance.cases import Case, load_file
from conformance.frameworks import Framework
from conformance.runner import run_check

CASES = """
[[case]]
id = "random-rate2"
input = { generator = "normal", seed = 1, shape = [1, 7, 7, 2] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 3] }
rate = 2
padding = "SAME"

[[case]]
id = "does-not-fit"
input = { generator = "ones", shape = [1, 4, 4, 1] }
kernel = { generator = "ones", shape = [3, 3, 1, 1] }
rate = 2
expect = { kind = "no-valid-output" }
"""


@pytest.fixture
def cases(tmp_path: Path) -> dict[str, Case]:
    path = tmp_path / "fake.toml"
    path.write_text(CASES)
    loaded = load_file(path)
    assert not loaded.errors
    return {c.id: c for c in loaded.cases}


class FakeAdapter(Adapter):
    framework = Framework("fake", "a fake framework")

    def __init__(self, op: str, behaviour: Any) -> None:
        self.op = op
        self.behaviour = behaviour

    def check_available(self, device: str) -> None:
        if device == "gpu":
            raise Unavailable("no GPU in the fake framework")

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        return self.behaviour(call)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return "fake.conv(x, w)"

    def environment(self) -> dict[str, Any]:
        return {"version": "0"}


def correct(call: ConvCall) -> np.ndarray:
    y = reference.conv(call.x, call.w, rate=call.rate, padding=call.padding, groups=call.groups)
    return y.astype(call.x.dtype)


def check(case: Case, behaviour: Any, device: str = "cpu") -> dict[str, Any]:
    return run_check(case, Target(FakeAdapter("behaviour", behaviour), device, "strict"), "float32")


def test_correct_adapter_passes(cases: dict[str, Case]) -> None:
    record = check(cases["random-rate2"], correct)
    assert record["outcome"] == "pass"
    assert 0 <= record["error_ratio"] < 1


def test_wrong_shape_is_shape(cases: dict[str, Case]) -> None:
    record = check(cases["random-rate2"], lambda call: correct(call)[:, :-1])
    assert record["outcome"] == "shape"
    assert "[1, 6, 7, 3]" in record["message"] and "expected [1, 7, 7, 3]" in record["message"]


def test_swapped_axes_is_shape_or_mismatch(cases: dict[str, Case]) -> None:
    record = check(cases["random-rate2"], lambda call: np.swapaxes(correct(call), 1, 2).copy())
    assert record["outcome"] == "mismatch"


def test_wrong_dtype_is_shape(cases: dict[str, Case]) -> None:
    record = check(cases["random-rate2"], lambda call: correct(call).astype(np.float64))
    assert record["outcome"] == "shape" and "dtype float64" in record["message"]


def test_garbage_values_are_a_mismatch_naming_the_worst_element(cases: dict[str, Case]) -> None:
    def garbage(call: ConvCall) -> np.ndarray:
        y = correct(call)
        y[0, 3, 4, 2] += 0.5
        return y

    record = check(cases["random-rate2"], garbage)
    assert record["outcome"] == "mismatch"
    assert record["worst"]["index"] == [0, 3, 4, 2]
    assert record["error_ratio"] > 1
    assert "fake.conv(x, w)" in record["reproduction"]


def test_raising_where_a_value_is_due_is_error(cases: dict[str, Case]) -> None:
    def boom(call: ConvCall) -> np.ndarray:
        raise RuntimeError("kernel not implemented")

    record = check(cases["random-rate2"], boom)
    assert record["outcome"] == "error" and "RuntimeError: kernel not implemented" in record["message"]


def test_no_valid_output_raise_or_empty_is_conformant(cases: dict[str, Case]) -> None:
    def boom(call: ConvCall) -> np.ndarray:
        raise ValueError("kernel larger than input")

    assert check(cases["does-not-fit"], boom)["outcome"] == "expected-error"
    empty = check(cases["does-not-fit"], lambda call: np.zeros((1, 0, 0, 1), np.float32))
    assert empty["outcome"] == "expected-error"


def test_returning_a_value_where_none_is_valid_is_missing_error(cases: dict[str, Case]) -> None:
    record = check(cases["does-not-fit"], lambda call: np.zeros((1, 1, 1, 1), np.float32))
    assert record["outcome"] == "missing-error"


def test_empty_of_the_wrong_rank_is_shape(cases: dict[str, Case]) -> None:
    record = check(cases["does-not-fit"], lambda call: np.zeros((0,), np.float32))
    assert record["outcome"] == "shape"


def test_missing_device_is_skip_with_the_reason(cases: dict[str, Case]) -> None:
    record = check(cases["random-rate2"], correct, device="gpu")
    assert record["outcome"] == "skip" and "no GPU" in record["message"]


def test_unsupported_is_decided_before_running(cases: dict[str, Case]) -> None:
    class NoDilation(FakeAdapter):
        def unsupported_reason(self, call_params: Any) -> str | None:
            return "no dilation" if call_params.rate != (1, 1) else None

    record = run_check(cases["random-rate2"], Target(NoDilation("x", correct), "cpu", "strict"), "float32")
    assert record["outcome"] == "unsupported" and record["message"] == "no dilation"


def test_numpy_target_is_an_independent_algorithm_that_agrees(cases: dict[str, Case]) -> None:
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        record = run_check(cases["random-rate2"], Target(NumpyIm2col(), "cpu", "strict"), dtype)
        assert record["outcome"] == "pass", record["message"]
    assert (
        run_check(cases["does-not-fit"], Target(NumpyIm2col(), "cpu", "strict"), "float32")["outcome"]
        == "expected-error"
    )


def test_record_holds_the_documented_fields(cases: dict[str, Case]) -> None:
    record = check(cases["random-rate2"], correct)
    for key in (
        "case",
        "target",
        "framework",
        "device",
        "dtype",
        "outcome",
        "input_shape",
        "kernel_shape",
        "rate",
        "stride",
        "padding",
        "groups",
        "max_abs_error",
        "error_ratio",
        "message",
        "input_sha256",
    ):
        assert key in record
    assert record["case"] == "fake/random-rate2" and record["pads"] == [[2, 2], [2, 2]]
