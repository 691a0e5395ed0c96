"""Precision contracts, the probabilistic bound for long accumulations, and zero-sized tensors.

The fake adapters answer as JAX (tests/fault_adapters.py), so the suite's own cases/contracts.toml
judges them: remove its JAX entry and the contract tests below fail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conformance import contracts, derivatives
from conformance.adapters import QUANTITIES, Target
from conformance.cases import Case, load_file, load_paths
from conformance.compare import (
    ELEMENT_FALSE_ALARM,
    LOOSENESS_LIMIT,
    PROBABILISTIC,
    PROBABILISTIC_ELEMENT_CAP,
    RUN_FALSE_ALARMS,
    WORST_CASE,
    ErrorModel,
    gamma,
    probabilistic_gamma,
    probabilistic_lambda,
)
from conformance.dtypes import float_format
from conformance.judging import random_operands
from conformance.runner import run_check
from tests.fault_adapters import ScaledKernelGradient, StorageDtypeSum, WithinContract
from tests.projects import REPO, child_environment, write_project

CASES = """
[[case]]
id = "c16-rate2"
input = { generator = "normal", seed = 1, shape = [1, 9, 9, 16] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 16, 4] }
rate = 2
padding = "SAME"
dtypes = ["float16", "bfloat16"]

[[case]]
id = "long-kernel-gradient"
input = { generator = "normal", seed = 3, shape = [1, 128, 128, 1] }
kernel = { generator = "normal", seed = 4, shape = [3, 3, 1, 1] }
rate = 2
padding = "SAME"
dtypes = ["bfloat16"]
"""


@pytest.fixture
def cases(tmp_path: Path) -> dict[str, Case]:
    path = tmp_path / "precision.toml"
    path.write_text(CASES)
    loaded = load_file(path)
    assert not loaded.errors
    return {c.id: c for c in loaded.cases}


SUITE = contracts.suite_contracts()


def test_the_suite_contracts_load_and_cover_every_framework_on_the_cpu() -> None:
    assert not SUITE.errors
    for target in ("torch.conv2d-cpu", "tensorflow.conv2d-cpu", "jax.conv_general_dilated-cpu", "keras-jax.Conv2D-cpu"):
        found = SUITE.find(target, "output", "cpu", "strict", "bfloat16")
        assert found is not None and found.accumulation == "float32", target
    assert SUITE.find("torch.conv2d-cpu", "output", "cpu", "strict", "float64") is None
    assert SUITE.find("torch.conv2d-gpu", "output", "gpu", "strict", "float16") is None  # not measured there


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_summing_in_the_storage_dtype_breaks_the_contract_within_the_dtype_bound(
    cases: dict[str, Case], dtype: str
) -> None:
    target = Target(StorageDtypeSum(), "cpu", "strict")
    judged = run_check(cases["c16-rate2"], target, dtype, contracts=SUITE)
    assert judged["outcome"] == "contract", judged["message"]
    bounds = judged["bounds"]
    assert bounds is not None and bounds["dtype"]["ratio"] < 1 < bounds["contract"]["ratio"]
    assert bounds["contract"]["id"] == "jax-cpu-float32-accumulation"
    assert judged["error_ratio"] == bounds["contract"]["ratio"]
    assert "beyond contract jax-cpu-float32-accumulation" in judged["message"]
    # The same answer with no contract: the dtype's bound alone passes it (what issue 18 reported).
    assert run_check(cases["c16-rate2"], target, dtype)["outcome"] == "pass"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_error_just_inside_the_contract_passes(cases: dict[str, Case], dtype: str) -> None:
    judged = run_check(cases["c16-rate2"], Target(WithinContract(), "cpu", "strict"), dtype, contracts=SUITE)
    assert judged["outcome"] == "pass", judged["message"]
    assert 0.1 < judged["bounds"]["contract"]["ratio"] < 1  # type: ignore[index]


def test_a_scaled_bfloat16_kernel_gradient_over_a_long_sum_now_fails(cases: dict[str, Case]) -> None:
    case = cases["long-kernel-gradient"]
    assert derivatives.accumulation_length(case, "grad-kernel") == 128 * 128
    target = Target(ScaledKernelGradient(), "cpu", "strict")
    judged = run_check(case, target, "bfloat16", contracts=SUITE)
    assert judged["outcome"] == "contract", judged["message"]
    assert judged["bounds"]["contract"]["kind"] == PROBABILISTIC  # type: ignore[index]
    # Before: the dtype's worst-case bound is infinite here (n u >= 1), so nothing could fail.
    assert gamma(128 * 128, float_format("bfloat16").unit_roundoff) == math.inf
    assert run_check(case, target, "bfloat16")["outcome"] == "pass"


def test_lambda_meets_the_false_alarm_budget() -> None:
    u = 2.0**-24
    for n in (1, 100, 16384, 10**6):
        lam = probabilistic_lambda(n, u)
        assert 2 * n * math.exp(-(lam**2) * (1 - u) ** 2 / 2) == pytest.approx(ELEMENT_FALSE_ALARM, rel=1e-9)
    assert pytest.approx(RUN_FALSE_ALARMS) == ELEMENT_FALSE_ALARM * PROBABILISTIC_ELEMENT_CAP


def test_the_probabilistic_bound_judges_only_long_sums_of_random_data() -> None:
    bf16, f32 = float_format("bfloat16"), float_format("float32")
    assert (
        ErrorModel(bf16, 9, random_data=True).accumulation_gamma[1] == WORST_CASE
    )  # short: the worst case is not loose
    long = ErrorModel(bf16, 16384, accumulation=f32, random_data=True)
    assert long.accumulation_gamma[1] == PROBABILISTIC
    assert long.accumulation_gamma[0] == probabilistic_gamma(16384, 2.0**-24)
    assert gamma(16384, 2.0**-24) > LOOSENESS_LIMIT * long.accumulation_gamma[0]
    assert ErrorModel(bf16, 16384, accumulation=f32).accumulation_gamma[1] == WORST_CASE  # structured data: no model


def test_the_corpus_stays_inside_the_probabilistic_element_cap() -> None:
    """Elements a run of the default and extended tiers may judge probabilistically, counted with every
    CPU and GPU target that computes that quantity of the case's op and rank, for the derivatives the
    case opts into: the cap behind the false-alarm budget holds with room."""
    from conformance.adapters import all_targets

    loaded = load_paths([REPO / "cases"])
    per_quantity: dict[tuple[str, str, int], int] = {}  # (op, quantity, rank) -> the targets that compute it
    for t in all_targets():
        for rank in t.adapter.ranks:
            key = (t.adapter.operation, t.adapter.quantity, rank)
            per_quantity[key] = per_quantity.get(key, 0) + 1
    fp32 = float_format("float32")
    total = 0
    for case in loaded.cases:
        if case.tier == "large" or not random_operands(case) or not case.geometry.has_valid_output:
            continue
        shapes = {"output": case.output_shape, "input": case.input_shape, "kernel": case.kernel_shape}
        for quantity in ("output", *QUANTITIES):
            if QUANTITIES.get(quantity, 0) > case.derivatives:
                continue
            shape = shapes[quantity.split("-")[-1]]
            targets = per_quantity.get((case.op, quantity, case.rank), 0)
            n = derivatives.accumulation_length(case, quantity)
            for dtype in case.dtypes:
                fmt = float_format(dtype)
                for accumulation in (None, fp32):
                    if (
                        ErrorModel(fmt, n, accumulation=accumulation, random_data=True).accumulation_gamma[1]
                        == PROBABILISTIC
                    ):
                        total += int(np.prod(shape)) * targets
                        break
    assert 0 < total < PROBABILISTIC_ELEMENT_CAP / 10, total


def test_a_contracts_file_with_errors_names_file_entry_and_field(tmp_path: Path) -> None:
    path = tmp_path / "contracts.toml"
    rest = (
        'statement = "s"\nevidence = [{ link = "l", says = "s" }]\n'
        'measured = { worst_ratio = {}, checks = 0, command = "c" }\n'
    )
    path.write_text(
        '[[contract]]\nid = "ok"\ntargets = ["torch.*"]\ndtypes = ["float16"]\naccumulation = "float32"\n' + rest + "\n"
        '[[contract]]\nid = "bad"\ntargets = ["jax.*"]\ndtypes = ["float16"]\naccumulation = "float17"\n' + rest
    )
    loaded = contracts.load(path, "contracts.toml")
    assert [c.id for c in loaded.entries] == ["ok"]
    (error,) = loaded.errors
    assert error.case == "bad" and error.field == "accumulation" and error.line == 14, str(error)


def test_a_storage_dtype_sum_fails_the_run(tmp_path: Path) -> None:
    """Through the plugin, in its own process: the project's cases/ has no contracts.toml, so the suite's
    own judges, and the broken accumulation is a failing check of its own outcome."""
    import subprocess
    import sys

    project = write_project(tmp_path, ["StorageDtypeSum"], {"precision.toml": CASES.split('[[case]]\nid = "long')[0]})
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "jax", "-k", "storage_sum",
         f"--conformance-json={out}", "--conformance-html=none"],
        cwd=project, env=child_environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout[-3000:]
    records = [r for r in json.loads(out.read_text())["results"] if r["target"] == "jax.storage_sum-cpu"]
    assert sorted(r["outcome"] for r in records) == ["contract", "contract"], run.stdout[-3000:]
    assert "2 failed" in run.stdout


def test_zero_sized_tensors_are_cases_with_their_contract(tmp_path: Path) -> None:
    from conformance.adapters.numpy import NumpyIm2col

    path = tmp_path / "zero.toml"
    path.write_text(
        '[[case]]\nid = "cin0"\ninput = { generator = "normal", seed = 1, shape = [1, 7, 7, 0] }\n'
        'kernel = { generator = "normal", seed = 2, shape = [3, 3, 0, 2] }\nrate = 2\n\n'
        '[[case]]\nid = "batch0"\ninput = { generator = "normal", seed = 1, shape = [0, 7, 7, 2] }\n'
        'kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 3] }\nrate = 2\n\n'
        '[[case]]\nid = "no-height"\ninput = { generator = "normal", seed = 1, shape = [1, 0, 7, 2] }\n'
        'kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 3] }\n'
    )
    loaded = load_file(path)
    (error,) = loaded.errors
    assert error.case == "no-height" and error.field == "input" and "at least 1" in error.message
    by_id = {c.id: c for c in loaded.cases}
    assert by_id["cin0"].output_shape == (1, 3, 3, 2) and by_id["batch0"].output_shape == (0, 3, 3, 3)
    target = Target(NumpyIm2col(), "cpu", "strict")
    for case in by_id.values():
        record = run_check(case, target, "float32")
        assert record["outcome"] == "pass" and not record["max_abs_error"], record["message"]


def test_a_tensor_with_its_input_channels_dropped_is_a_shape_failure(tmp_path: Path) -> None:
    """pytorch/pytorch#56998's answer (an empty tensor instead of zeros) is caught."""
    from tests.test_classification import FakeAdapter

    path = tmp_path / "zero.toml"
    path.write_text(
        '[[case]]\nid = "cin0"\ninput = { generator = "normal", seed = 1, shape = [1, 7, 7, 0] }\n'
        'kernel = { generator = "normal", seed = 2, shape = [3, 3, 0, 2] }\nrate = 2\n'
    )
    (case,) = load_file(path).cases
    dropped = FakeAdapter("conv", lambda call: np.zeros((1, 3, 3, 0), np.float32))
    assert run_check(case, Target(dropped, "cpu", "strict"), "float32")["outcome"] == "shape"
    nonzero = FakeAdapter("conv", lambda call: np.full((1, 3, 3, 2), 1e-30, np.float32))
    assert run_check(case, Target(nonzero, "cpu", "strict"), "float32")["outcome"] == "mismatch"


def test_the_run_tallies_each_contract_and_merge_tallies_again() -> None:
    from conformance.merging import merge

    stated = [c.summary() for c in SUITE.entries]
    judged = {"id": "jax-cpu-float32-accumulation", "accumulation": "float32", "kind": WORST_CASE}
    records = [
        {"dtype": "float16", "outcome": "pass", "bounds": {"contract": {**judged, "ratio": 0.5}}},
        {
            "dtype": "float16",
            "outcome": "xfail",
            "observed_outcome": "contract",
            "bounds": {"contract": {**judged, "ratio": 3.0}},
        },
        {"dtype": "bfloat16", "outcome": "pass", "bounds": {"dtype": {"kind": WORST_CASE, "ratio": 0.1}}},
    ]
    (jax,) = [c for c in contracts.tally(stated, records) if c["id"] == judged["id"]]
    assert jax["run"] == {"checks": 2, "broken": 1, "worst_ratio": {"float16": 3.0}}
    keys = ("case", "target", "dtype")

    def run_of(name: str) -> dict[str, object]:
        named = [{**r, **dict(zip(keys, (f"c{i}", name, r["dtype"]), strict=True))} for i, r in enumerate(records)]
        return {"results": named, "contracts": contracts.tally(stated, named), "environment": {}, "command": []}

    documents = [(name, run_of(name)) for name in ("a", "b")]
    (merged,) = [c for c in merge(documents)["contracts"] if c["id"] == judged["id"]]
    assert merged["run"]["checks"] == 4 and merged["run"]["broken"] == 2
