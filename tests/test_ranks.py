"""Ranks 1 and 3: causal padding, and every framework's 1-D and 3-D targets judged like the 2-D ones.

Each new primary call passes a case of its rank, and the same call with its kernel reversed along the
first spatial axis (`FlippedFirstAxis`, a port's correlation/convolution mix-up) fails it: the check
can fail for every API this rank added, Keras' layers in their own processes included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance import runner
from conformance.adapters import ADAPTERS, FrameworkCall, Target, Wrapper
from conformance.adapters.keras import in_child
from conformance.cases import Case, load_file
from conformance.semantics import geometry, transposed_geometry
from tests.fault_adapters import FlippedFirstAxis

CASES = """
[defaults]
dtypes = ["float32"]

[[case]]
id = "causal-1d"
input = { generator = "integers", seed = 3, low = -3, high = 3, shape = [1, 12, 2] }
kernel = { generator = "integers", seed = 4, low = -2, high = 2, shape = [2, 2, 2] }
rate = 4
padding = "CAUSAL"

[[case]]
id = "depthwise-1d"
input = { generator = "integers", seed = 5, low = -3, high = 3, shape = [1, 11, 2] }
kernel = { generator = "integers", seed = 6, low = -2, high = 2, shape = [3, 1, 4] }
groups = 2
rate = 2
padding = "SAME"

[[case]]
id = "transposed-1d"
op = "conv_transpose"
input = { generator = "integers", seed = 7, low = -3, high = 3, shape = [1, 6, 3] }
kernel = { generator = "integers", seed = 8, low = -2, high = 2, shape = [3, 2, 3] }
stride = 2
padding = "VALID"

[[case]]
id = "strided-3d"
description = "Rate 1: TensorFlow's own CPU Conv3D refuses dilation (a known divergence); the flip is what is checked."
input = { generator = "integers", seed = 9, low = -3, high = 3, shape = [1, 5, 4, 6, 2] }
kernel = { generator = "integers", seed = 10, low = -2, high = 2, shape = [3, 2, 3, 2, 2] }
stride = [1, 2, 1]
padding = "VALID"

[[case]]
id = "transposed-3d"
op = "conv_transpose"
input = { generator = "integers", seed = 11, low = -3, high = 3, shape = [1, 3, 2, 3, 2] }
kernel = { generator = "integers", seed = 12, low = -2, high = 2, shape = [3, 2, 2, 2, 2] }
stride = 2
padding = "VALID"
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    path = tmp_path_factory.mktemp("ranks") / "ranks.toml"
    path.write_text(CASES)
    loaded = load_file(path)
    assert not loaded.errors, loaded.errors
    return {case.id: case for case in loaded.cases}


def test_causal_pads_the_dilated_kernel_before_the_axis_only() -> None:
    geo = geometry("CAUSAL", (10,), (3,), (4,), (1,))
    assert geo.pads == ((8, 0),) and geo.output_size == (10,)  # (3 - 1) * 4 before, nothing after
    assert geometry("CAUSAL", (10,), (2,), (3,), (2,)).output_size == (5,)
    with pytest.raises(ValueError, match="forward convolution"):
        transposed_geometry("CAUSAL", (5,), (3,), (1,), (2,))


def test_a_causal_transposed_case_is_an_error_naming_its_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[case]]\nid = "causal-transpose"\nop = "conv_transpose"\npadding = "CAUSAL"\n'
        'input = { generator = "ones", shape = [1, 5, 2] }\nkernel = { generator = "ones", shape = [3, 2, 2] }\n'
    )
    (error,) = load_file(path).errors
    assert error.case == "causal-transpose" and error.field == "padding" and "CAUSAL" in error.message


def _plain(adapter: object) -> bool:
    return isinstance(adapter, FrameworkCall) and not isinstance(adapter, Wrapper)


# Every primary call of rank 1 or 3 (not the modes, oracles or derivatives wrapped around them), with
# the case that exercises it; Keras' layers on every backend (in a child process per backend).
def _case_for(adapter: FrameworkCall, rank: int) -> str:
    if rank == 1 and adapter.op.startswith(("Depthwise", "depthwise", "Separable")):
        return "depthwise-1d"
    transposed = adapter.operation == "conv_transpose"
    if rank == 1:
        return "transposed-1d" if transposed else "causal-1d"
    return "transposed-3d" if transposed else "strided-3d"


def _inner_of(adapter: object) -> object:
    while isinstance(adapter, Wrapper):
        adapter = adapter.inner
    return adapter


PRIMARIES = [
    (adapter, rank)
    for adapter in (_inner_of(a) for a in ADAPTERS if not isinstance(a, Wrapper) or a.variant == "")
    if isinstance(adapter, FrameworkCall) and _plain(adapter)
    for rank in adapter.ranks
    if rank != 2
]


@pytest.mark.parametrize(("adapter", "rank"), PRIMARIES, ids=lambda value: getattr(value, "name", str(value)))
def test_every_new_rank_call_passes_and_its_flipped_kernel_fails(
    adapter: FrameworkCall, rank: int, cases: dict[str, Case]
) -> None:
    case = cases[_case_for(adapter, rank)]
    plain, flipped = adapter, FlippedFirstAxis(adapter)
    if adapter.framework.name.startswith("keras-"):
        plain, flipped = in_child(adapter, devices=("cpu",)), in_child(flipped, devices=("cpu",))
    try:
        plain.check_available("cpu")
    except Exception as exc:  # (a framework not installed here)
        pytest.skip(str(exc))
    right = runner.run_check(case, Target(plain, "cpu", "strict"), "float32")
    assert right["outcome"] == "pass", (case.id, right["message"])
    wrong = runner.run_check(case, Target(flipped, "cpu", "strict"), "float32")
    assert wrong["outcome"] == "mismatch" and wrong["exact"], (case.id, wrong["outcome"], wrong["message"])


def test_the_overview_tallies_one_target_s_checks_per_rank() -> None:
    """One target (JAX's, ONNX Runtime's) serves every rank: the summary's operation rows count each
    rank's checks apart, a rank whose checks ran nothing has no row, and a failing rank comes first."""
    from conformance.overview import Overview

    def record(shape: list[int], outcome: str, ratio: float | None = None) -> dict[str, object]:
        return {"case": f"c{shape}", "target": "jax.conv-cpu", "framework": "jax", "dtype": "float32",
                "input_shape": shape, "outcome": outcome, "error_ratio": ratio, "message": ""}  # fmt: skip

    outcomes = [([1, 5, 2], "pass", 0.5), ([1, 5, 2], "pass", 0.25), ([1, 5, 5, 2], "pass", 0.1)]
    outcomes += [([1, 5, 5, 2], "mismatch", 3.0), ([1, 5, 5, 5, 2], "unsupported", None)]
    overview = Overview().add_all(record(shape, outcome, ratio) for shape, outcome, ratio in outcomes)
    rows = {key: (dict(tally.counts), tally.worst_ratio) for key, tally in overview.groups("operation").items()}
    assert rows == {
        ("jax", "conv 2-D"): ({"conformant": 1, "failing": 1}, 3.0),
        ("jax", "conv 1-D"): ({"conformant": 2}, 0.5),
    }
    assert list(rows) == [("jax", "conv 2-D"), ("jax", "conv 1-D")]
