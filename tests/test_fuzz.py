"""--conformance-fuzz finds a divergence, shrinks it to a minimal configuration and writes a case
file that loads and reproduces it; it stays quiet where every target is right."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conformance import fuzz, runner
from conformance.adapters import Target
from conformance.cases import load_file
from tests.fault_adapters import Slow, StrideRateBug, TransposeIgnoresOutputPadding
from tests.projects import child_environment, write_project

pytest.importorskip("hypothesis")


def test_a_divergence_is_shrunk_and_written_as_a_case_file(tmp_path: Path) -> None:
    target = Target(StrideRateBug(), "cpu", "strict")
    result = fuzz.explore(200, [target], [], tmp_path, seed=3)
    assert result.divergence is not None and result.case_file is not None
    raw = tomllib.loads(result.case_file.read_text())["case"][0]
    # Shrunk: the trigger (stride and rate 2 along H) and nothing else that could be smaller.
    assert raw["stride"][0] == 2 and raw["rate"][0] == 2
    assert raw["stride"][1] == 1 and raw["rate"][1] == 1 and raw["groups"] == 1
    assert raw["input"]["shape"][0] == 1
    (case,) = load_file(result.case_file, tmp_path).cases
    assert runner.run_check(case, target, case.dtypes[0])["outcome"] == "mismatch"


def test_a_transposed_divergence_is_found_and_written_with_its_op(tmp_path: Path) -> None:
    """The fuzzer draws the transposed op too; a target of that op gets only such configurations."""
    target = Target(TransposeIgnoresOutputPadding(), "cpu", "strict")
    result = fuzz.explore(300, [target], [], tmp_path, seed=5)
    assert result.case_file is not None
    raw = tomllib.loads(result.case_file.read_text())["case"][0]
    assert raw["op"] == "conv_transpose"
    (case,) = load_file(result.case_file, tmp_path).cases
    # Shrunk to the smallest trigger: one pixel of output_padding, stated or derived (a short kernel's).
    assert max(case.geometry.output_padding) == 1  # type: ignore[union-attr]
    assert runner.run_check(case, target, case.dtypes[0])["outcome"] == "shape"


def test_no_divergence_no_file(tmp_path: Path) -> None:
    slow = Slow()
    slow.pause_s = 0.0
    result = fuzz.explore(30, [Target(slow, "cpu", "strict")], [], tmp_path / "fuzz")
    assert result.divergence is None and result.case_file is None
    assert result.checked > 10
    assert not (tmp_path / "fuzz").exists()


def test_the_option_runs_one_item_that_fails_with_the_case_file(tmp_path: Path) -> None:
    one = 'description = "x"\n[[case]]\nid = "x"\ninput = { generator = "ones", shape = [1, 3, 3, 1] }\n'
    one += 'kernel = { generator = "ones", shape = [1, 1, 1, 1] }\n'
    project = write_project(tmp_path, ["StrideRateBug"], {"one.toml": one})
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--conformance-fuzz=120", "-k", "fuzz"]
    command += ["--conformance-fuzz-target=faulty.*", "--conformance-json=out/results.json"]
    result = subprocess.run(command, cwd=project, env=child_environment(), capture_output=True, text=True)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "fuzzing found a divergence" in result.stdout
    (written,) = (project / "out" / "fuzz").glob("*.toml")
    assert str(written.name) in result.stdout
    assert "faulty.stride_rate_bug-cpu" in written.read_text()


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_the_fuzzer_draws_cases_of_any_rank(rank: int) -> None:
    """Every configuration it draws for a rank is a case of that rank (or one the loader refuses, as
    a padded input beyond the size limit), and its answer is the reference's, on the NumPy target."""
    from hypothesis import HealthCheck, given, settings

    from conformance.adapters.numpy import NumpyIm2col

    drawn: list[int] = []

    @settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(fuzz.configurations(rank))
    def check(raw: dict[str, object]) -> None:
        case = fuzz._case(raw)
        if case is None:
            return
        drawn.append(case.rank)
        if case.op == "conv":
            record = runner.run_check(case, Target(NumpyIm2col(), "cpu", "strict"), case.dtypes[0])
            assert record["outcome"] in ("pass", "expected-error", "unsupported"), record["message"]

    check()
    assert drawn and set(drawn) == {rank}
