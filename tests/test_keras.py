"""Keras 3 targets: every backend in its own process, the layers built as users build them, what
Keras refuses on every backend, what one backend refuses, whole models, and broken front-ends
that the suite must catch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance import composite_checks, composites, profiles, runner
from conformance.adapters import ADAPTERS, Target
from conformance.adapters.child import InChildProcess, children
from conformance.adapters.keras import (
    BACKEND_VARIABLE,
    BACKENDS,
    ChannelsFirst,
    Compiled,
    KerasConv,
    KerasDepthwiseConv,
    KerasGradient,
    ZeroPadding,
    in_child,
)
from conformance.cases import Case, load_file
from conformance.frameworks import version_of
from tests import fault_adapters
from tests.projects import not_installed

pytestmark = not_installed("keras")

CASES = """
[defaults]
dtypes = ["float32"]

[[case]]
id = "same-rate2"
input = { generator = "integers", seed = 1, low = -3, high = 3, shape = [1, 9, 8, 3] }
kernel = { generator = "integers", seed = 2, low = -2, high = 2, shape = [3, 2, 3, 4] }
rate = [2, 3]
padding = "SAME"

[[case]]
id = "stride-and-rate"
input = { generator = "integers", seed = 3, low = -3, high = 3, shape = [1, 12, 12, 2] }
kernel = { generator = "integers", seed = 4, low = -2, high = 2, shape = [3, 3, 2, 2] }
rate = 2
stride = 2

[[case]]
id = "explicit"
input = { generator = "integers", seed = 5, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 6, low = -2, high = 2, shape = [2, 3, 2, 2] }
rate = [2, 1]
padding = [[1, 2], [0, 1]]

[[case]]
id = "depthwise-stride"
input = { generator = "integers", seed = 7, low = -3, high = 3, shape = [1, 11, 11, 2] }
kernel = { generator = "integers", seed = 8, low = -2, high = 2, shape = [3, 3, 1, 4] }
rate = 3
stride = 2
groups = 2
padding = "SAME"

[[case]]
id = "grad-same"
derivatives = 1
input = { generator = "integers", seed = 9, low = -3, high = 3, shape = [1, 8, 7, 2] }
kernel = { generator = "integers", seed = 10, low = -2, high = 2, shape = [3, 3, 2, 3] }
rate = 2
padding = "SAME"
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    path = tmp_path_factory.mktemp("keras") / "keras.toml"
    path.write_text(CASES)
    loaded = load_file(path, path.parent)
    assert not loaded.errors
    return {case.id: case for case in loaded.cases}


def _in_child(inner: Any) -> InChildProcess:
    return in_child(inner, devices=("cpu",))


def _check(case: Case, inner: Any, dtype: str = "float32") -> dict[str, Any]:
    return dict(runner.run_check(case, Target(_in_child(inner), "cpu", "strict"), dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_layer_and_mode_computes_the_reference_on_each_backend(backend: str, cases: dict[str, Case]) -> None:
    for inner in (
        KerasConv(backend),
        Compiled(KerasConv(backend)),
        ZeroPadding(KerasConv(backend)),
        KerasGradient(KerasConv(backend), "grad-kernel"),
    ):
        record = _check(cases["same-rate2"], inner)
        assert record["outcome"] == "pass" and record["exact"], (inner.name, record["message"])
    depthwise = _check(cases["depthwise-stride"], KerasDepthwiseConv(backend))
    assert depthwise["outcome"] == "pass", depthwise["message"]
    assert "depth_multiplier=2" in depthwise["reproduction"] and "w.reshape(3, 3, 2, 2)" in depthwise["reproduction"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_loader_that_swaps_the_kernel_axes_is_caught(backend: str, cases: dict[str, Case]) -> None:
    broken = _check(cases["same-rate2"], fault_adapters.KerasKernelNotTransposed(backend))  # a 3x2 kernel
    assert broken["outcome"] in ("error", "shape", "mismatch"), broken["message"]


def test_what_keras_refuses_on_every_backend_is_unsupported_in_its_own_words(cases: dict[str, Case]) -> None:
    for backend in BACKENDS:
        record = _check(cases["stride-and-rate"], KerasConv(backend))
        assert record["outcome"] == "unsupported", record["message"]
        assert "`strides > 1` not supported in conjunction with `dilation_rate > 1`" in record["message"]


def test_explicit_pads_are_zero_padding_before_a_valid_layer(cases: dict[str, Case]) -> None:
    plain = _check(cases["explicit"], KerasConv("jax"))
    assert plain["outcome"] == "unsupported" and "@zero-padding" in plain["message"]
    padded = _check(cases["explicit"], ZeroPadding(KerasConv("jax")))
    assert padded["outcome"] == "pass", padded["message"]
    assert (
        "ZeroPadding2D(padding=((1, 2), (0, 1))" in padded["reproduction"]
        and "padding='valid'" in padded["reproduction"]
    )


def test_a_backend_refusal_is_an_error_naming_the_backends_words(cases: dict[str, Case]) -> None:
    """TensorFlow's own CPU Conv2D takes NHWC only (keras-team/keras#23650, a known divergence): the
    record gives TensorFlow's message, not only Keras' wrapper line. In float64, which TensorFlow
    never hands oneDNN (whose Conv2D takes NCHW), it is refused on every CPU."""
    record = _check(cases["same-rate2"], ChannelsFirst(KerasConv("tensorflow")), "float64")
    assert record["runtime"]["onednn_dtype"] is False
    assert record["outcome"] == "error", record["message"]
    assert "only supports the NHWC tensor format on the CPU" in record["message"]
    assert _check(cases["same-rate2"], ChannelsFirst(KerasConv("torch")), "float64")["outcome"] == "pass"


def test_records_carry_keras_and_backend_versions_and_the_reproduction_sets_the_backend(cases: dict[str, Case]) -> None:
    record = _check(cases["same-rate2"], KerasConv("torch"))
    assert record["framework"] == "keras-torch" and record["framework_version"] == version_of("keras")
    assert record["backend_version"] == version_of("torch")
    reproduction = record["reproduction"]
    assert reproduction.index("os.environ['KERAS_BACKEND'] = 'torch'") < reproduction.index("import keras")
    environment = _in_child(KerasConv("torch")).environment()
    assert environment["backend"] == "torch" and environment["flags"][BACKEND_VARIABLE] == "torch"


def test_a_keras_process_that_dies_costs_only_its_own_check(cases: dict[str, Case]) -> None:
    died = _check(cases["same-rate2"], fault_adapters.KerasDiesInTheCall("jax"))
    assert died["outcome"] == "crash" and "SIGKILL" in died["message"], died["message"]
    after = _check(cases["same-rate2"], KerasConv("jax"))
    assert after["outcome"] == "pass", after["message"]
    assert sum(child.alive() for child in children().values()) >= 1


def _aspp_record(target: Target) -> dict[str, Any]:
    loaded, errors = composites.load(Path("cases") / composites.FILE_NAME, "composites.toml")
    assert not errors
    aspp = next(c for c in loaded if c.kind == "aspp")
    return dict(composite_checks.run_check(aspp, aspp.as_case("composites.toml"), target, "float32"))


def test_a_composite_runs_as_one_keras_model_and_a_wrong_one_is_caught() -> None:
    right = _aspp_record(Target(_in_child(Compiled(KerasConv("jax"))), "cpu", "strict"))
    assert right["outcome"] == "pass", right["message"]
    assert "keras.Model(inputs" in right["reproduction"] and "predict_on_batch" in right["reproduction"]
    wrong = _aspp_record(Target(_in_child(Compiled(fault_adapters.KerasModelWrongRate("jax"))), "cpu", "strict"))
    assert wrong["outcome"] == "mismatch", wrong["message"]


def test_every_backend_has_every_mode_and_the_keras_marker() -> None:
    names = {adapter.name for adapter in ADAPTERS}
    for backend in BACKENDS:
        for variant in ("", "@compiled", "@channels-first", "@zero-padding", "@grad-input"):
            assert f"keras-{backend}.Conv2D{variant}" in names
        assert f"keras-{backend}.DepthwiseConv2D@grad-kernel" in names
        assert "keras" in BACKENDS[backend].all_markers
    assert "keras-tensorflow.Conv2D@jit-compile" in names


def test_the_report_names_a_keras_columns_backend_version(cases: dict[str, Case]) -> None:
    from conformance.report import pack

    record = _check(cases["same-rate2"], KerasConv("torch"))
    columns = pack({"results": [record]})["columns"]
    profile = profiles.current()  # (the suite run under a machine profile: its column says so)
    expected = f"{version_of('keras')} (torch {version_of('torch')})" + (f" [{profile}]" if profile else "")
    assert [column["version"] for column in columns] == [expected]
