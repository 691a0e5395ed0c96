"""The backward-pass reference, the derivative targets' bounds and outcomes, their reproductions,
their collection, and the GPU code path (precision modes, CPU-versus-GPU, repeats) with the device
selection pointed at the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance import derivatives, reference, runner
from conformance.adapters import ADAPTERS, QUANTITIES, Adapter, ConvCall, DerivativeAdapter, Target, all_targets
from conformance.adapters.base import DeviceComparison
from conformance.cases import Case, load_file
from conformance.frameworks import Framework
from conformance.semantics import geometry, taps_meeting_one_input
from tests.projects import child_environment

pytest_plugins = ["pytester"]

CASES = """
[[case]]
id = "float"
dtypes = ["float32", "float64"]
derivatives = 2
input = { generator = "normal", seed = 1, shape = [2, 9, 8, 4] }
kernel = { generator = "normal", seed = 2, shape = [3, 2, 2, 6] }
rate = [2, 3]
stride = [2, 1]
padding = [[1, 2], [0, 1]]
groups = 2

[[case]]
id = "integer"
dtypes = ["float32", "bfloat16"]
derivatives = 2
input = { generator = "integers", seed = 1, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 2, low = -2, high = 2, shape = [2, 3, 2, 2] }
rate = [2, 1]
padding = [[1, 2], [0, 1]]

[[case]]
id = "same-rate1"
dtypes = ["float32"]
derivatives = 2
input = { generator = "integers", seed = 3, low = -3, high = 3, shape = [1, 6, 6, 2] }
kernel = { generator = "integers", seed = 4, low = -2, high = 2, shape = [3, 3, 2, 2] }
padding = "SAME"

[[case]]
id = "transposed-stride2"
op = "conv_transpose"
dtypes = ["float32"]
derivatives = 2
input = { generator = "integers", seed = 13, low = -3, high = 3, shape = [1, 4, 5, 2] }
kernel = { generator = "integers", seed = 14, low = -2, high = 2, shape = [3, 3, 3, 2] }
stride = 2
padding = 1
output_padding = 1

[[case]]
id = "transposed-rate2"
op = "conv_transpose"
dtypes = ["float32"]
derivatives = 2
input = { generator = "integers", seed = 15, low = -3, high = 3, shape = [1, 4, 5, 2] }
kernel = { generator = "integers", seed = 16, low = -2, high = 2, shape = [3, 3, 3, 2] }
rate = 2
padding = "SAME"

[[case]]
id = "depthwise"
dtypes = ["float32"]
derivatives = 2
input = { generator = "integers", seed = 5, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 6, low = -2, high = 2, shape = [2, 3, 1, 2] }
rate = [2, 1]
padding = "SAME"
groups = 2

[[case]]
id = "integer-1d"
description = "1-D, causal pads at rate 2 (TensorFlow's CPU gradient of a dilated conv1d is refused: same-rate1-1d)."
derivatives = 2
input = { generator = "integers", seed = 21, low = -3, high = 3, shape = [1, 9, 2] }
kernel = { generator = "integers", seed = 22, low = -2, high = 2, shape = [2, 2, 2] }
rate = 2
padding = "CAUSAL"

[[case]]
id = "same-rate1-1d"
derivatives = 2
input = { generator = "integers", seed = 23, low = -3, high = 3, shape = [1, 9, 2] }
kernel = { generator = "integers", seed = 24, low = -2, high = 2, shape = [3, 2, 2] }
padding = "SAME"

[[case]]
id = "depthwise-1d"
derivatives = 2
input = { generator = "integers", seed = 25, low = -3, high = 3, shape = [1, 9, 2] }
kernel = { generator = "integers", seed = 26, low = -2, high = 2, shape = [3, 1, 2] }
groups = 2
padding = "SAME"

[[case]]
id = "transposed-1d"
op = "conv_transpose"
derivatives = 2
input = { generator = "integers", seed = 27, low = -3, high = 3, shape = [1, 5, 2] }
kernel = { generator = "integers", seed = 28, low = -2, high = 2, shape = [3, 3, 2] }
stride = 2
padding = [[1, 1]]
output_padding = 1

[[case]]
id = "same-rate1-3d"
derivatives = 2
input = { generator = "integers", seed = 29, low = -3, high = 3, shape = [1, 4, 5, 3, 2] }
kernel = { generator = "integers", seed = 30, low = -2, high = 2, shape = [2, 3, 2, 2, 2] }
padding = "SAME"

[[case]]
id = "transposed-3d"
op = "conv_transpose"
derivatives = 2
input = { generator = "integers", seed = 31, low = -3, high = 3, shape = [1, 3, 2, 3, 2] }
kernel = { generator = "integers", seed = 32, low = -2, high = 2, shape = [3, 3, 3, 3, 2] }
stride = 2
padding = 1

[[case]]
id = "transposed-same-1d"
op = "conv_transpose"
derivatives = 2
input = { generator = "integers", seed = 33, low = -3, high = 3, shape = [1, 5, 2] }
kernel = { generator = "integers", seed = 34, low = -2, high = 2, shape = [4, 3, 2] }
stride = 2
padding = "SAME"

[[case]]
id = "transposed-same-3d"
op = "conv_transpose"
derivatives = 2
input = { generator = "integers", seed = 35, low = -3, high = 3, shape = [1, 3, 2, 3, 2] }
kernel = { generator = "integers", seed = 36, low = -2, high = 2, shape = [2, 2, 2, 3, 2] }
stride = 2
padding = "SAME"

[[case]]
id = "no-output"
dtypes = ["float32"]
derivatives = 1
input = { generator = "normal", seed = 1, shape = [1, 4, 4, 1] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 1, 1] }
rate = 2

[[case]]
id = "nan"
dtypes = ["float32"]
derivatives = 1
input = { generator = "normal", seed = 1, shape = [1, 6, 6, 1], set = [{ at = [0, 2, 2, 0], value = nan }] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 1, 1] }

[[case]]
id = "forward-only"
input = { generator = "normal", seed = 1, shape = [1, 6, 6, 1] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 1, 1] }

[[case]]
id = "first-order"
derivatives = 1
input = { generator = "normal", seed = 1, shape = [1, 6, 6, 1] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 1, 1] }
"""


@pytest.fixture
def cases(tmp_path: Path) -> dict[str, Case]:
    path = tmp_path / "gradients.toml"
    path.write_text(CASES)
    loaded = load_file(path, tmp_path)
    assert not loaded.errors, loaded.errors
    return {case.id: case for case in loaded.cases}


# --- the reference ---------------------------------------------------------------------------


def _random_geometries(count: int, seed: int = 0) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    drawn = []
    while len(drawn) < count:
        groups = int(rng.choice([1, 2, 3]))
        c_per_group, out_per_group = (int(v) for v in rng.integers(1, 3, 2))
        kernel, rate, stride = ((int(a), int(b)) for a, b in rng.integers(1, 4, (3, 2)))
        size = tuple(int(v) for v in rng.integers(3, 12, 2))
        padding: Any = str(rng.choice(["SAME", "VALID", "explicit"]))
        if padding == "explicit":
            padding = tuple(tuple(int(p) for p in rng.integers(0, 3, 2)) for _ in range(2))
        geo = geometry(padding, size, kernel, rate, stride)
        if geo.has_valid_output:
            batch = int(rng.integers(1, 3))
            drawn.append(
                (geo, groups, (batch, *size, groups * c_per_group), (*kernel, c_per_group, groups * out_per_group))
            )
    return drawn


def test_the_backward_reference_is_the_adjoint_of_the_forward_one() -> None:
    """<conv(x, w), dy> = <x, dL/dx> = <w, dL/dw>, exactly on small integers, over 150 random
    geometries (per-axis rates and strides, every padding form, groups): this identity is what
    makes them the gradients, and the two sides are computed by code written separately."""
    rng = np.random.default_rng(1)
    for geo, groups, x_shape, w_shape in _random_geometries(150):
        x = rng.integers(-3, 4, x_shape).astype(np.float64)
        w = rng.integers(-3, 4, w_shape).astype(np.float64)
        y = reference.conv_resolved(x, w, geo, groups)
        dy = rng.integers(-3, 4, y.shape).astype(np.float64)
        dx = reference.conv_input_grad(dy, w, geo, groups)
        dw = reference.conv_kernel_grad(x, dy, geo, groups)
        assert dx.shape == x.shape and dw.shape == w.shape
        assert (y * dy).sum() == (x * dx).sum() == (w * dw).sum(), (geo, groups)


def _scatter_gradients(x: np.ndarray, w: np.ndarray, dy: np.ndarray, geo: Any, groups: int) -> tuple[Any, Any]:
    """The chain rule, one product at a time: every (output pixel, tap, channel) sends its share."""
    (top, bottom), (left, right) = geo.pads
    x_pad = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    dx_pad, dw = np.zeros_like(x_pad), np.zeros_like(w)
    k_h, k_w, c_per_group, c_out = w.shape
    out_per_group = c_out // groups
    for n, a, b, o in np.ndindex(*dy.shape):
        group = o // out_per_group
        for u, v, c in np.ndindex(k_h, k_w, c_per_group):
            row, col, channel = (
                a * geo.stride[0] + u * geo.rate[0],
                b * geo.stride[1] + v * geo.rate[1],
                group * c_per_group + c,
            )
            dx_pad[n, row, col, channel] += dy[n, a, b, o] * w[u, v, c, o]
            dw[u, v, c, o] += dy[n, a, b, o] * x_pad[n, row, col, channel]
    return dx_pad[:, top : top + x.shape[1], left : left + x.shape[2]], dw


def test_the_backward_reference_equals_the_chain_rule_product_by_product() -> None:
    rng = np.random.default_rng(2)
    for geo, groups, x_shape, w_shape in _random_geometries(25, seed=3):
        x, w = rng.normal(size=x_shape), rng.normal(size=w_shape)
        dy = rng.normal(size=reference.conv_resolved(x, w, geo, groups).shape)
        dx, dw = _scatter_gradients(x, w, dy, geo, groups)
        np.testing.assert_allclose(reference.conv_input_grad(dy, w, geo, groups), dx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(reference.conv_kernel_grad(x, dy, geo, groups), dw, rtol=1e-12, atol=1e-12)


def test_taps_meeting_one_input_position_is_the_largest_count() -> None:
    for k in range(1, 7):
        for rate in range(1, 6):
            for stride in range(1, 6):
                counts = [sum(1 for u in range(k) if p >= u * rate and (p - u * rate) % stride == 0) for p in range(80)]
                assert max(counts) == taps_meeting_one_input(k, rate, stride), (k, rate, stride)


def test_accumulation_lengths(cases: dict[str, Case]) -> None:
    case = cases["float"]  # kernel 3x2, rate (2, 3), stride (2, 1), 6 outputs in 2 groups, batch 2
    taps_h, taps_w = 3, 2  # gcd(2, 2) = 2: every tap along H can meet one row; stride 1 along W
    assert derivatives.accumulation_length(case, "grad-input") == taps_h * taps_w * 3
    o_h, o_w = case.output_shape[1:3]
    assert derivatives.accumulation_length(case, "grad-kernel") == 2 * o_h * o_w
    assert derivatives.accumulation_length(case, "hvp-kernel") == 2 * o_h * o_w


# --- outcomes, with fake derivative targets ------------------------------------------------------


class FakeDerivative(DerivativeAdapter):
    """The reference's own derivative rounded to the case dtype, with a fault to inject."""

    fault = ""

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        assert call.cotangent is not None and call.direction_input is not None and call.direction_kernel is not None
        geo, groups = call.geometry, call.groups
        if self.quantity == "grad-input":
            w = call.w.astype(np.float64)
            if self.fault == "unflipped":  # the transposed correlation without flipping the kernel
                w = w[::-1, ::-1]
            value = reference.conv_input_grad(call.cotangent.astype(np.float64), w, geo, groups)
        elif self.quantity == "grad-kernel":
            value = reference.conv_kernel_grad(
                call.x.astype(np.float64), call.cotangent.astype(np.float64), geo, groups
            )
            if self.fault == "oihw":
                value = value.transpose(3, 2, 0, 1)
        elif self.quantity == "hvp-input":
            value = reference.conv_input_grad(call.cotangent, call.direction_kernel, geo, groups)
        else:
            value = reference.conv_kernel_grad(call.direction_input, call.cotangent, geo, groups)
        if self.fault == "zero":
            value = np.zeros_like(value)
        if self.fault == "ulp":
            value = np.nextafter(value.astype(call.x.dtype), np.inf)
        return value.astype(call.x.dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return "# fake"

    def describe(self, call: ConvCall, device: str, precision: str) -> Any:
        raise NotImplementedError("a fake computes its answer in `run`")


class FakePrimary(Adapter):
    framework, op, devices = Framework("fake", "a fake framework"), "conv", ("cpu", "gpu")

    def check_available(self, device: str) -> None:
        return None

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        y = reference.conv_resolved(call.x.astype(np.float64), call.w.astype(np.float64), call.geometry, call.groups)
        if device == "gpu":
            y = y + 1e-3  # a GPU kernel that disagrees with its CPU one
        return y.astype(call.x.dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return "y = 'fake'"

    def environment(self) -> dict[str, Any]:
        return {}


def _fake(quantity: str, fault: str = "") -> DerivativeAdapter:
    adapter = FakeDerivative(FakePrimary(), quantity)
    adapter.fault = fault
    return adapter


@pytest.mark.parametrize("quantity", list(QUANTITIES))
def test_a_right_derivative_passes_and_exact_data_demand_exactness(cases: dict[str, Case], quantity: str) -> None:
    for dtype in ("float32", "bfloat16"):
        record = runner.run_check(cases["integer"], Target(_fake(quantity), "cpu", "strict"), dtype)
        assert record["outcome"] == "pass" and record["exact"], record["message"]
        assert record["quantity"] == quantity and record["variant"] == quantity
    floating = runner.run_check(cases["float"], Target(_fake(quantity), "cpu", "strict"), "float32")
    assert floating["outcome"] == "pass" and not floating["exact"] and floating["error_ratio"] < 1


def test_an_unflipped_kernel_in_the_input_gradient_is_a_mismatch(cases: dict[str, Case]) -> None:
    record = runner.run_check(cases["float"], Target(_fake("grad-input", "unflipped"), "cpu", "strict"), "float64")
    assert record["outcome"] == "mismatch", record["message"]
    assert "(n, h, w, c)" in record["message"]


def test_a_kernel_gradient_in_the_wrong_layout_is_a_shape_failure(cases: dict[str, Case]) -> None:
    record = runner.run_check(cases["float"], Target(_fake("grad-kernel", "oihw"), "cpu", "strict"), "float32")
    assert record["outcome"] == "shape" and "(HWIO)" in record["message"], record["message"]


@pytest.mark.parametrize("quantity", ["hvp-input", "hvp-kernel"])
def test_a_vanishing_second_derivative_is_a_mismatch(cases: dict[str, Case], quantity: str) -> None:
    record = runner.run_check(cases["float"], Target(_fake(quantity, "zero"), "cpu", "strict"), "float32")
    assert record["outcome"] == "mismatch"
    if quantity == "hvp-kernel":  # a kernel-shaped error map, over the kernel's taps
        assert record["error_map"]["hw"] == list(cases["float"].kernel_shape[:2])
        assert "(h, w, i, o)" in record["message"]


def test_one_ulp_is_inside_the_bound_for_float_data_but_not_for_exact_data(cases: dict[str, Case]) -> None:
    floating = runner.run_check(cases["float"], Target(_fake("grad-kernel", "ulp"), "cpu", "strict"), "float32")
    assert floating["outcome"] == "pass", floating["message"]
    exact = runner.run_check(cases["integer"], Target(_fake("grad-kernel", "ulp"), "cpu", "strict"), "float32")
    assert exact["outcome"] == "mismatch" and "bit-exact" in exact["message"]


def test_nothing_to_differentiate_is_unsupported_with_the_reason(cases: dict[str, Case]) -> None:
    no_output = runner.run_check(cases["no-output"], Target(_fake("grad-input"), "cpu", "strict"), "float32")
    assert no_output["outcome"] == "unsupported" and "no valid output" in no_output["message"]
    nan = runner.run_check(cases["nan"], Target(_fake("grad-input"), "cpu", "strict"), "float32")
    assert nan["outcome"] == "unsupported" and "finite data only" in nan["message"]


def test_tangents_are_seeded_and_integer_for_integer_data(cases: dict[str, Case]) -> None:
    first = derivatives.tangents(cases["integer"], "float32")
    derivatives.tangents.cache_clear()
    again = derivatives.tangents(cases["integer"], "float32")
    np.testing.assert_array_equal(first.cotangent, again.cotangent)
    assert set(np.unique(first.cotangent)) <= {-2, -1, 0, 1, 2}
    floating = derivatives.tangents(cases["float"], "float32").cotangent
    assert floating.shape == cases["float"].output_shape and not np.all(floating == np.round(floating))


# --- the real frameworks' reproductions ----------------------------------------------------------

DERIVATIVE_ADAPTERS = [a for a in ADAPTERS if isinstance(a, DerivativeAdapter)]


@pytest.mark.parametrize("adapter", DERIVATIVE_ADAPTERS, ids=lambda a: a.name)
def test_the_reproduction_repeats_the_derivative(adapter: DerivativeAdapter, cases: dict[str, Case]) -> None:
    """Executed as written, the reproduction's `g` is the derivative the target returned (exact
    integer data, so bit for bit). TF's conv2d gradient refuses rates > 1 on the CPU (a known
    divergence): the SAME rate-1 case then stands in; depthwise_conv2d needs its own case, the
    transposed convolution's targets a transposed case, and each rank its own cases."""
    try:
        adapter.check_available("cpu")
    except Exception as exc:
        pytest.skip(str(exc))
    transposed = (
        cases["transposed-stride2"], cases["transposed-rate2"], cases["transposed-1d"], cases["transposed-3d"],
        cases["transposed-same-1d"], cases["transposed-same-3d"],
    )  # fmt: skip
    other_ranks = (cases["integer-1d"], cases["same-rate1-1d"], cases["depthwise-1d"], cases["same-rate1-3d"])
    for case in (cases["integer"], cases["same-rate1"], cases["depthwise"], *other_ranks, *transposed):
        if adapter.mismatch(case.op, case.rank) is not None:
            continue
        record = runner.run_check(case, Target(adapter, "cpu", "strict"), "float32")
        if record["outcome"] == "pass":
            break
    if record["outcome"] == "unsupported":
        pytest.skip(record["message"])
    assert record["outcome"] == "pass" and record["exact"], record["message"]
    namespace: dict[str, Any] = {}
    exec(record["reproduction"], namespace)
    values, _ = derivatives._answer(case, "float32", adapter.quantity, derivatives.tangents(case, "float32"))
    np.testing.assert_array_equal(np.asarray(namespace["g"], dtype=np.float64), values)


# --- collection ----------------------------------------------------------------------------------


def test_derivative_items_only_for_the_order_a_case_opts_into(tmp_path: Path) -> None:
    path = tmp_path / "gradients.toml"
    path.write_text(CASES)
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q", f"--cases={path}",
        "-m", "cpu and torch", "--conformance-html=none", f"--conformance-json={tmp_path / 'r.json'}",
        "--conformance-batch=off",  # (one item per check: the ids name the targets)
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=child_environment(), timeout=600)
    ids = [line for line in done.stdout.splitlines() if "::" in line]
    assert ids, done.stdout + done.stderr

    def quantities(case_id: str) -> set[str]:
        found = {q for q in QUANTITIES for line in ids if f"::{case_id}[" in line and f"@{q}-" in line}
        assert any(f"::{case_id}[torch.conv2d-cpu-" in line for line in ids)  # the forward check stays
        return found

    assert quantities("forward-only") == set()
    assert quantities("first-order") == {"grad-input", "grad-kernel"}
    assert quantities("float") == set(QUANTITIES)


# --- GPUs: the code path, with the device selection pointed at the CPU ------------------------------


def test_gpu_targets_cover_derivatives_in_both_precision_modes() -> None:
    ids = {t.id for t in all_targets()}
    for framework in ("torch.conv2d", "jax.conv_general_dilated", "tensorflow.conv2d"):
        for quantity in QUANTITIES:
            assert {f"{framework}@{quantity}-gpu", f"{framework}@{quantity}-gpu-defaults"} <= ids
        assert f"{framework}@vs-cpu-gpu" in ids and f"{framework}@vs-cpu-gpu-defaults" not in ids
        assert f"{framework}@vs-cpu-cpu" not in ids


@pytest.fixture
def torch_gpu_on_cpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    from conformance.adapters import pytorch

    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(pytorch, "_torch_device", lambda device: "cpu")
    return pytorch


@pytest.fixture
def jax_gpu_on_cpu(monkeypatch: pytest.MonkeyPatch) -> Any:
    from conformance.adapters import jax as jax_adapter

    pytest.importorskip("jax")
    monkeypatch.setattr(jax_adapter, "_platform", lambda device: "cpu")
    return jax_adapter


@pytest.mark.parametrize("fixture", ["torch_gpu_on_cpu", "jax_gpu_on_cpu"])
def test_the_gpu_path_runs_derivatives_modes_and_the_cpu_comparison(
    request: pytest.FixtureRequest, fixture: str, cases: dict[str, Case]
) -> None:
    module = request.getfixturevalue(fixture)
    gpu_targets = [t for t in all_targets(module.ADAPTERS) if t.device == "gpu"]
    assert {t.precision for t in gpu_targets} == {"strict", "defaults"}
    by_id = {t.id: t for t in gpu_targets}
    name = module.PRIMARY.name
    for target_id in (f"{name}-gpu-defaults", f"{name}@grad-input-gpu-defaults", f"{name}@hvp-kernel-gpu"):
        record = runner.run_check(cases["float"], by_id[target_id], "float32", repeat=3)
        assert record["outcome"] == "pass", (target_id, record["message"])
        assert record["device"] == "gpu"
    defaults = runner.run_check(cases["float"], by_id[f"{name}@grad-kernel-gpu-defaults"], "float32")
    strict = runner.run_check(cases["float"], by_id[f"{name}@grad-kernel-gpu"], "float32")
    assert defaults["worst"]["bound"] > 100 * strict["worst"]["bound"]  # judged against TF32's bound
    comparison = runner.run_check(cases["float"], by_id[f"{name}@vs-cpu-gpu"], "float32")
    assert comparison["outcome"] == "pass" and comparison["message"] == f"bitwise equal to {name} on cpu"


def test_a_gpu_that_disagrees_with_the_cpu_fails_the_comparison(cases: dict[str, Case]) -> None:
    comparison = DeviceComparison(FakePrimary())
    record = runner.run_check(cases["float"], Target(comparison, "gpu", "strict"), "float64")
    assert record["outcome"] == "mismatch" and record["message"].startswith("against fake.conv on cpu:")


def test_gpu_targets_repeat_by_default(pytester: pytest.Pytester) -> None:
    from conformance.plugin.options import settings

    config = pytester.parseconfigure("-p", "conformance.plugin", "--conformance-gpu-repeat", "3")
    assert settings(config).repeat_for("gpu") == 3 and settings(config).repeat_for("cpu") == 1
    config = pytester.parseconfigure("-p", "conformance.plugin", "--conformance-repeat", "5")
    assert settings(config).repeat_for("gpu") == 5 and settings(config).repeat_for("cpu") == 5
