"""ONNX Runtime targets: the pads ONNX's way, auto_pad, dtypes ONNX cannot state, and a broken
variant that the suite must catch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance import runner
from conformance.adapters import Target
from conformance.adapters.onnxruntime import AutoPad, OnnxRuntimeConv, OnnxRuntimeTorchExport, Optimisations
from conformance.adapters.program import Do, Name, Program, With, invoke, method
from conformance.cases import Case, load_file
from tests.projects import not_installed

pytestmark = not_installed("onnxruntime")

CASES = """
[defaults]
dtypes = ["float32"]

[[case]]
id = "asymmetric"
input = { generator = "integers", seed = 1, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 2, low = -2, high = 2, shape = [2, 3, 2, 2] }
rate = [2, 1]
padding = [[1, 2], [0, 1]]

[[case]]
id = "same-rate1"
input = { generator = "normal", seed = 3, shape = [1, 8, 7, 2] }
kernel = { generator = "normal", seed = 4, shape = [3, 3, 2, 3] }
padding = "SAME"
stride = 2

[[case]]
id = "same-rate2"
input = { generator = "normal", seed = 5, shape = [1, 8, 7, 2] }
kernel = { generator = "normal", seed = 6, shape = [3, 3, 2, 3] }
padding = "SAME"
rate = 2

[[case]]
id = "double"
dtypes = ["float64", "bfloat16"]
input = { generator = "normal", seed = 7, shape = [1, 6, 6, 1] }
kernel = { generator = "normal", seed = 8, shape = [3, 3, 1, 1] }
rate = 2
"""


@pytest.fixture
def cases(tmp_path: Path) -> dict[str, Case]:
    (tmp_path / "ort.toml").write_text(CASES)
    loaded = load_file(tmp_path / "ort.toml", tmp_path)
    assert not loaded.errors
    return {case.id: case for case in loaded.cases}


def _check(case: Case, adapter: Any, dtype: str = "float32") -> dict[str, Any]:
    return dict(runner.run_check(case, Target(adapter, "cpu", "strict"), dtype))


class PadsInTorchOrder(OnnxRuntimeConv):
    """A converter bug: the pads written [top, bottom, left, right] instead of ONNX's begins-then-ends."""

    def attributes(self, call: Any) -> dict[str, Any]:
        (top, bottom), (left, right) = call.geometry.pads
        return {**super().attributes(call), "pads": [top, bottom, left, right]}


def test_the_pads_go_in_onnx_order_and_a_converter_that_swaps_them_is_caught(cases: dict[str, Case]) -> None:
    right = _check(cases["asymmetric"], OnnxRuntimeConv())
    assert right["outcome"] == "pass" and right["exact"], right["message"]
    assert "pads=[1, 0, 2, 1]" in right["reproduction"]  # top, left, bottom, right
    wrong = _check(cases["asymmetric"], PadsInTorchOrder())
    assert wrong["outcome"] in ("mismatch", "shape"), wrong["message"]


def test_auto_pad_same_upper_is_tensorflows_same_and_refused_with_dilation(cases: dict[str, Case]) -> None:
    auto_pad = AutoPad(OnnxRuntimeConv())
    record = _check(cases["same-rate1"], auto_pad)
    assert record["outcome"] == "pass" and "auto_pad='SAME_UPPER'" in record["reproduction"], record["message"]
    refused = _check(cases["same-rate2"], auto_pad)  # microsoft/onnxruntime#20582 (a known divergence in the corpus)
    assert refused["outcome"] == "error" and "Dilation not supported for AutoPadType::SAME_UPPER" in refused["message"]
    assert _check(cases["same-rate2"], OnnxRuntimeConv())["outcome"] == "pass"  # the same pads, written out
    assert _check(cases["asymmetric"], auto_pad)["outcome"] == "unsupported"


def test_double_is_refused_by_the_cpu_provider_and_bfloat16_cannot_be_stated(cases: dict[str, Case]) -> None:
    double = _check(cases["double"], OnnxRuntimeConv(), "float64")
    assert double["outcome"] == "error" and "NOT_IMPLEMENTED" in double["message"]  # microsoft/onnxruntime#7546
    bfloat16 = _check(cases["double"], OnnxRuntimeConv(), "bfloat16")
    assert bfloat16["outcome"] == "unsupported" and "not bfloat16" in bfloat16["message"]


def test_records_and_environment_name_the_runtime(cases: dict[str, Case]) -> None:
    import onnxruntime

    record = _check(cases["same-rate2"], Optimisations(OnnxRuntimeConv(), "optimizations-off"))
    assert record["framework"] == "onnxruntime" and record["framework_version"] == onnxruntime.__version__
    assert "ORT_DISABLE_ALL" in record["reproduction"]
    environment = OnnxRuntimeConv().environment()
    assert environment["opset"] == 21 and "CPUExecutionProvider" in environment["providers"]


class ExportWithoutTranspose(OnnxRuntimeTorchExport):
    """An export script that loads the HWIO kernel into the OIHW weight with the spatial axes swapped."""

    def describe(self, call: Any, device: str, precision: str) -> Any:
        program = super().describe(call, device, precision)
        kernel = invoke("torch.tensor", method("w", "transpose", 1, 0, 2, 3), dtype=Name(f"torch.{call.dtype}"))
        swapped = method(kernel, "permute", 3, 2, 0, 1)
        statements = tuple(
            With(s.context, (Do(method("conv.weight", "copy_", swapped)),)) if isinstance(s, With) else s
            for s in program.statements
        )
        return Program(statements)


def test_the_torch_export_path_runs_the_exported_model(cases: dict[str, Case]) -> None:
    pytest.importorskip("torch")
    exported = OnnxRuntimeTorchExport()
    padded = _check(cases["asymmetric"], exported)
    assert padded["outcome"] == "pass" and padded["exact"], padded["message"]
    assert "torch.nn.ZeroPad2d([0, 1, 1, 2])" in padded["reproduction"] and "dynamo=False" in padded["reproduction"]
    # torch's padding="same" is exported as auto_pad SAME_UPPER, which ONNX Runtime refuses with dilation (#20582)
    same = _check(cases["same-rate2"], exported)
    assert same["outcome"] == "error" and "Dilation not supported for AutoPadType::SAME_UPPER" in same["message"]
    assert _check(cases["same-rate1"], exported)["outcome"] == "unsupported"  # torch: padding="same" at stride 1 only
    wrong = _check(cases["asymmetric"], ExportWithoutTranspose())
    assert wrong["outcome"] in ("mismatch", "shape", "error"), wrong["message"]
