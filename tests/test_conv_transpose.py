"""The transposed convolution (op = "conv_transpose"): its geometry, its float64 reference (the adjoint
of the forward one, checked exactly on integers), its case fields and their errors, and the
classifier on transposed targets that are wrong the ways frameworks have been."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance import derivatives, reference, sweeps
from conformance.adapters import ConvCall, Target
from conformance.cases import Case, load_file
from conformance.runner import run_check
from conformance.semantics import (
    TransposedGeometry,
    effective_kernel_size,
    output_padding_limit,
    transposed_geometry,
)
from tests.fault_adapters import (
    StrideRateBug,
    TransposeIgnoresOutputPadding,
    TransposeKernelNotFlipped,
    TransposeShiftedOnePixel,
)


def random_geometries(count: int, seed: int = 0):
    """(geometry, groups) over strides, rates and kernels 1-4, SAME, VALID and explicit crops with every
    legal output_padding, per-axis values; those with no valid output left out."""
    rng = np.random.default_rng(seed)
    made = 0
    while made < count:
        stride, rate = tuple(int(v) for v in rng.integers(1, 4, 2)), tuple(int(v) for v in rng.integers(1, 4, 2))
        kernel, size = tuple(int(v) for v in rng.integers(1, 5, 2)), tuple(int(v) for v in rng.integers(1, 6, 2))
        choice = int(rng.integers(0, 3))
        if choice < 2:
            geo = transposed_geometry(("SAME", "VALID")[choice], size, kernel, rate, stride)
        else:
            crops = tuple(tuple(int(v) for v in rng.integers(0, 4, 2)) for _ in range(2))
            extra = tuple(int(rng.integers(0, output_padding_limit(s, r))) for s, r in zip(stride, rate, strict=True))
            geo = transposed_geometry(crops, size, kernel, rate, stride, extra)  # type: ignore[arg-type]
        if geo.has_valid_output:
            made += 1
            yield geo, int(rng.integers(1, 3))


def integers(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(-3, 4, shape).astype(np.float64)


def test_the_documents_output_lengths() -> None:
    """Seed 004's function: SAME i*s, VALID i*s + max(k - s, 0), FULL i*s - (s + k - 2) (FULL: k - 1
    cropped from each side); with a dilated kernel, k is the effective one."""
    for i in range(1, 9):
        for k in range(1, 6):
            for s in range(1, 4):
                for r in (1, 2, 3):
                    k_eff = effective_kernel_size(k, r)
                    spatial = ((i, i), (k, k), (r, r), (s, s))
                    assert transposed_geometry("SAME", *spatial).output_size[0] == i * s
                    assert transposed_geometry("VALID", *spatial).output_size[0] == i * s + max(k_eff - s, 0)
                    full = transposed_geometry(k_eff - 1, *spatial).output_size[0]
                    assert full == max(i * s - (s + k_eff - 2), 0)
    document = ((100, 100), (10, 10), (1, 1), (2, 2))
    assert [transposed_geometry(p, *document).output_size for p in ("SAME", "VALID", 9)] == [
        (200, 200),
        (208, 208),
        (190, 190),
    ]


def test_same_crops_like_the_forward_same_with_the_odd_pixel_at_the_end() -> None:
    geo = transposed_geometry("SAME", (4, 4), (2, 4), (1, 1), (1, 1))
    assert geo.pads == ((0, 1), (1, 2)) and geo.output_size == (4, 4)
    short = transposed_geometry("SAME", (3, 3), (1, 1), (1, 1), (2, 2))  # a kernel shorter than the stride
    assert short.pads == ((0, 0), (0, 0)) and short.output_padding == (1, 1) and short.output_size == (6, 6)


def test_the_forward_geometry_maps_the_output_back_to_the_input() -> None:
    for geo, _ in random_geometries(300, seed=1):
        assert geo.forward.output_size == geo.input_size, geo


def test_adjoint_identity_holds_exactly_on_integers() -> None:
    """<conv(x, w), y> = <x, conv_transpose(y, w)> for the same rate, stride, pads and groups (the
    forward op's last pads lose output_padding), bit for bit: integer products and sums are exact."""
    rng = np.random.default_rng(7)
    for geo, groups in random_geometries(400, seed=2):
        c_in, out_per_group = groups * int(rng.integers(1, 3)), int(rng.integers(1, 3))
        y = integers(rng, (2, *geo.input_size, c_in))
        w = integers(rng, (*geo.kernel_size, out_per_group, c_in))
        z = reference.conv_transpose_resolved(y, w, geo, groups)
        assert z.shape == (2, *geo.output_size, out_per_group * groups), geo
        x = integers(rng, z.shape)
        forward = reference.conv_resolved(x, w, geo.forward, groups)
        assert forward.shape == y.shape, geo
        assert float(np.sum(forward * y)) == float(np.sum(x * z)), geo


def test_scatter_reference_equals_the_forward_input_gradient() -> None:
    """Two derivations of one operator: the scatter here and the gather of `conv_input_grad`."""
    rng = np.random.default_rng(8)
    compared = 0
    for geo, groups in random_geometries(200, seed=3):
        if any(after < 0 for _, after in geo.forward.pads):
            continue  # (conv_input_grad crops to a forward input, which output_padding past the crop exceeds)
        y = integers(rng, (1, *geo.input_size, 2 * groups))
        w = integers(rng, (*geo.kernel_size, 2, 2 * groups))
        expected = reference.conv_input_grad(y, w, geo.forward, groups)
        np.testing.assert_array_equal(reference.conv_transpose_resolved(y, w, geo, groups), expected)
        compared += 1
    assert compared > 100


def test_no_valid_output_when_the_crops_take_everything() -> None:
    geo = transposed_geometry(((2, 2), (0, 0)), (2, 2), (3, 3), (1, 1), (1, 1))
    assert not geo.has_valid_output and geo.no_output_axes == (0,) and geo.output_size == (0, 4)
    assert reference.conv_transpose_resolved(np.ones((1, 2, 2, 1)), np.ones((3, 3, 1, 1)), geo, 1).shape == (
        1,
        0,
        4,
        1,
    )


def test_derivative_references_are_the_adjoints() -> None:
    """For L = <T_w x, dy>: <dL/dx, v> = <T_w v, dy> and <dL/dw, v> = <T_v x, dy>, exactly on integers."""
    rng = np.random.default_rng(9)
    for geo, groups in random_geometries(100, seed=4):
        case = _transposed_case(geo, groups)
        x, w = integers(rng, case.input_shape), integers(rng, case.kernel_shape)
        dy = integers(rng, case.output_shape)
        grad_x = derivatives.exact_answer(case, "grad-input", dy, w)
        grad_w = derivatives.exact_answer(case, "grad-kernel", dy, x)
        vx, vw = integers(rng, x.shape), integers(rng, w.shape)
        along_x = np.sum(reference.conv_transpose_resolved(vx, w, geo, groups) * dy)
        along_w = np.sum(reference.conv_transpose_resolved(x, vw, geo, groups) * dy)
        assert float(np.sum(grad_x * vx)) == float(along_x) and float(np.sum(grad_w * vw)) == float(along_w)


def _transposed_case(geo: TransposedGeometry, groups: int) -> Case:
    c_in = 2 * groups
    return Case(
        file="t.toml", suite="t", id="t", line=None, description="", source="", tags=(), dtypes=("float64",),
        input_spec={}, kernel_spec={}, input_shape=(1, *geo.input_size, c_in), kernel_shape=(*geo.kernel_size, 2, c_in),
        rate=geo.rate, stride=geo.stride, padding=geo.pads, groups=groups, expect_kind="reference",
        op="conv_transpose", output_padding=geo.output_padding,
    )  # fmt: skip


CASE = """
[[case]]
id = "t"
op = "conv_transpose"
input = { generator = "integers", seed = 1, low = -3, high = 3, shape = [1, 4, 5, 2] }
kernel = { generator = "integers", seed = 2, low = -2, high = 2, shape = [3, 2, 3, 2] }
stride = 2
rate = [1, 2]
padding = [[1, 0], [1, 1]]
output_padding = 1
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "t.toml"
    path.write_text(text)
    return load_file(path, tmp_path)


def test_a_transposed_case_loads_with_its_output_size(tmp_path: Path) -> None:
    loaded = load(tmp_path, CASE)
    assert not loaded.errors
    (case,) = loaded.cases
    # height: (4 - 1) 2 - 1 + 3 + 1 = 9; width: (5 - 1) 2 - 2 + 3 + 1 = 10; channels: 3 per group
    assert case.transposed and case.output_padding == (1, 1) and case.output_shape == (1, 9, 10, 3)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ((("padding = [[1, 0], [1, 1]]", 'padding = "SAME"'),), "output_padding", "SAME fixes"),
        ((("output_padding = 1", "output_padding = [2, 0]"),), "output_padding", "outside 0..1"),
        (
            (('op = "conv_transpose"\n', ""), ("[3, 2, 3, 2]", "[3, 2, 2, 3]")),
            "output_padding",
            'op = "conv_transpose" only',
        ),
        ((("shape = [3, 2, 3, 2]", "shape = [3, 2, 3, 4]"),), "kernel.shape", "fourth axis 4 != input channels 2"),
        ((('op = "conv_transpose"', 'op = "deconv"'),), "op", "'conv', 'conv_transpose', 'conv2d'"),
    ],
)
def test_mistakes_name_the_field(tmp_path: Path, change: tuple[tuple[str, str], ...], field: str, words: str) -> None:
    text = CASE
    for old, new in change:
        text = text.replace(old, new)
    loaded = load(tmp_path, text)
    assert len(loaded.errors) == 1, loaded.errors
    error = loaded.errors[0]
    assert error.case == "t" and error.field == field and words in error.message, error


def test_values_where_the_crops_leave_nothing_are_refused(tmp_path: Path) -> None:
    text = CASE.replace("padding = [[1, 0], [1, 1]]", "padding = 9").replace("output_padding = 1\n", "")
    loaded = load(tmp_path, text + 'expect = { kind = "values", plane = [[1]] }\n')
    (error,) = loaded.errors
    assert error.field == "expect.kind" and "crops" in error.message


def test_a_transposed_sweep_makes_the_forward_kernel_and_knows_output_padding() -> None:
    sweep = {
        "id": "s", "seed": 1, "op": "conv_transpose", "size": 4, "kernel_size": 3, "channels": 4, "out_channels": 6,
        "groups": 2, "padding": 1, "axes": {"output_padding": [0, 1]}, "stride": 2,
        "where": ["output_padding_h < stride_h"],
    }  # fmt: skip
    raws = list(sweeps.expand(sweep, {}))
    assert [raw["id"] for raw in raws] == ["s-op0", "s-op1"]
    assert all(raw["kernel"]["shape"] == [3, 3, 3, 4] and raw["op"] == "conv_transpose" for raw in raws)
    assert [raw["output_padding"] for raw in raws] == [0, 1]
    names = sweeps.variables({**sweeps.DEFAULT_SETTINGS, **sweep, "output_padding": 1})
    assert names["op"] == "conv_transpose" and names["output_padding_h"] == 1 and names["output_h"] == 8


@pytest.mark.parametrize(
    ("fault", "outcome"),
    [
        (TransposeShiftedOnePixel, "mismatch"),
        (TransposeKernelNotFlipped, "mismatch"),
        (TransposeIgnoresOutputPadding, "shape"),
    ],
)
def test_the_classifier_catches_a_wrong_transposed_convolution(tmp_path: Path, fault: type, outcome: str) -> None:
    (case,) = load(tmp_path, CASE).cases
    record = run_check(case, Target(fault(), "cpu", "strict"), "float32")
    assert record["outcome"] == outcome, record["message"]
    assert record["operation"] == "conv_transpose" and record["output_padding"] == [1, 1]


def test_a_correct_transposed_target_passes_exactly(tmp_path: Path) -> None:
    """(The faults' own baseline: the same computation undistorted is bit-exact on integers.)"""
    (case,) = load(tmp_path, CASE).cases
    record = run_check(case, Target(Undistorted(), "cpu", "strict"), "float32")
    assert record["outcome"] == "pass" and record["exact"] and record["max_abs_error"] == 0


class Undistorted(TransposeShiftedOnePixel):
    def distort(self, call: ConvCall) -> tuple[np.ndarray, TransposedGeometry]:
        return call.w, call.geometry  # type: ignore[return-value]


def test_a_target_of_the_other_op_is_unsupported_whoever_calls(tmp_path: Path) -> None:
    """Collection pairs ops; run_check refuses a mismatch itself, so no caller can judge a forward
    convolution's answer (the crops read as pads) against a transposed case."""
    (case,) = load(tmp_path, CASE).cases
    record = run_check(case, Target(StrideRateBug(), "cpu", "strict"), "float32")
    assert record["outcome"] == "unsupported" and "computes conv; this case is conv_transpose" in record["message"]


def test_records_carry_the_derived_output_padding(tmp_path: Path) -> None:
    text = CASE.replace("padding = [[1, 0], [1, 1]]", 'padding = "SAME"').replace("output_padding = 1\n", "")
    text = text.replace("shape = [3, 2, 3, 2]", "shape = [1, 1, 3, 2]").replace("stride = 2", "stride = 3")
    (case,) = load(tmp_path, text).cases
    record = run_check(case, Target(Undistorted(), "cpu", "strict"), "float32")
    assert record["output_padding"] == [2, 2] and record["output_shape"] == [1, 12, 15, 3]  # a 1x1 kernel at stride 3


def test_a_transposed_sweep_refuses_outputs_that_groups_do_not_divide() -> None:
    sweep = {
        "id": "s", "seed": 1, "op": "conv_transpose", "size": 4, "kernel_size": 3, "channels": 4, "groups": 2,
        "axes": {"out_channels": [2, 3]},
    }  # fmt: skip
    with pytest.raises(sweeps.SweepError, match="out_channels 3 is not divisible by groups 2"):
        list(sweeps.expand(sweep, {}))
