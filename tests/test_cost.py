"""A check's memory, estimated before it allocates (conformance/cost.py): a model's largest layers
are `unsupported` with the figures where they cannot fit, run where they can, and the estimate is
an upper bound on what a real framework's process takes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conformance import cost, isolation, runner
from conformance.adapters import ADAPTERS, Adapter, Target
from conformance.cases import load_file
from tests.projects import REPO, child_environment

# The ASPP branches of torchvision's DeepLabV3-ResNet50 at 129 x 129 (a 17 x 17 map, 2,048 channels).
ASPP = """
[[case]]
id = "aspp-r{rate}"
dtypes = ["float32"]
input = {{ generator = "normal", seed = 1, shape = [1, 17, 17, 2048] }}
kernel = {{ generator = "normal", seed = 2, shape = [3, 3, 2048, 256] }}
rate = {rate}
padding = [[{rate}, {rate}], [{rate}, {rate}]]
"""

# This machine's class (24 GiB, 2 workers): the limit each worker gets by default.
WORKER_LIMIT = isolation.Limits(None, None, int(24 * (1 << 30) * 0.8) // 2, 3)


@pytest.fixture
def aspp(tmp_path: Path) -> dict[int, Any]:
    path = tmp_path / "aspp.toml"
    path.write_text("".join(ASPP.format(rate=rate) for rate in (12, 24, 36)))
    return {case.rate[0]: case for case in load_file(path, tmp_path).cases}


def _adapter(name: str) -> Adapter:
    return next(adapter for adapter in ADAPTERS if adapter.name == name)


def _estimate(case: Any, adapter: Adapter) -> int:
    params = runner.call_params(case, "float32")
    order = 1 if adapter.quantity != "output" else 0
    return sum(part.size for part in cost.harness(cost.Shapes.of(params), order) + adapter.memory_estimate(params))


@pytest.mark.parametrize("framework", ["torch.conv2d", "tensorflow.conv2d", "jax.conv_general_dilated"])
def test_a_zero_inserted_kernel_too_large_for_a_worker_is_unsupported_with_its_figures(
    aspp: dict[int, Any], framework: str
) -> None:
    budget = WORKER_LIMIT.check_budget()
    assert budget is not None
    oracle = _adapter(f"{framework}@zero-inserted")
    for rate in (24, 36):  # 49 x 49 and 73 x 73 spread kernels of 2,048 x 256 channels
        record = runner.run_check(aspp[rate], Target(oracle, "cpu", "strict"), "float32", memory_budget=budget)
        assert record["outcome"] == "unsupported", record["message"]
        side = 2 * rate + 1
        assert f"zero-inserted kernel [{side}, {side}, 2048, 256]" in record["message"], record["message"]
        assert "a check may use here (the worker's 9.60 GiB (--conformance-memory-limit)" in record["message"]
        assert "would need about " in record["message"] and " GiB at its peak" in record["message"]
    # Rate 12 fits (its kernel is made in float32, not float64), and so does every primary call.
    assert _estimate(aspp[12], oracle) < budget[0]
    for rate in (12, 24, 36):
        assert _estimate(aspp[rate], _adapter(framework)) < budget[0] / 10
        assert _estimate(aspp[rate], _adapter(f"{framework}@grad-kernel")) < budget[0] / 10


def test_without_a_memory_limit_nothing_is_refused_for_its_size(aspp: dict[int, Any]) -> None:
    assert isolation.Limits(None, None, None, 3).check_budget() is None
    params = runner.call_params(aspp[36], "float32")
    parts = _adapter("torch.conv2d@zero-inserted").memory_estimate(params)
    assert cost.over_budget(parts, 1 << 50, "a large machine") is None
    assert cost.over_budget(parts, 1 << 30, "a small machine") is not None


def test_a_small_limit_still_leaves_a_check_half_of_it() -> None:
    budget = isolation.Limits(None, None, 1 << 30, 3).check_budget()
    assert budget is not None and budget[0] == 1 << 29 and "less 512 MiB for the frameworks" in budget[1]


# Peak memory of one check in a fresh process, over what the process held before it (the framework
# loaded and warmed by the same check once, the case prepared): the estimate must not be below it.
MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from conformance import runner
    from conformance.adapters import ADAPTERS, Target
    from conformance.cases import load_file
    case = load_file(Path({path!r}), Path({root!r})).cases[0]
    adapter = next(a for a in ADAPTERS if a.name == {name!r})
    target = Target(adapter, "cpu", "strict")
    runner.run_check(case, target, "float32")  # warm: the framework's one-time state is not the check's
    def status(field):
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
        return int(line.split()[1]) * 1024
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from here
    before = status("VmRSS:")
    record = runner.run_check(case, target, "float32")
    print(json.dumps({{"outcome": record["outcome"], "before": before, "peak": status("VmHWM:")}}))
    """
)


def test_the_estimate_bounds_what_a_real_check_takes(tmp_path: Path) -> None:
    """Measured here: 469 MiB used, 1,022 MiB estimated (the im2col term is the slack: oneDNN's
    direct kernel needs no workspace). A primary call, warmed, reuses what its warm-up freed."""
    name = "torch.conv2d@zero-inserted"
    pytest.importorskip("torch")
    # Large enough that the check's own arrays dwarf the noise of a process's memory (about 0.4 GB
    # for the spread kernel in all its copies), small enough for any machine.
    path = tmp_path / "mid.toml"
    path.write_text(ASPP.format(rate=12).replace("2048", "512").replace("256]", "128]"))
    case = load_file(path, tmp_path).cases[0]
    script = MEASURE.format(repo=str(REPO), path=str(path), root=str(tmp_path), name=name)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=child_environment(), timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.splitlines()[-1])
    assert measured["outcome"] == "pass", measured
    used = measured["peak"] - measured["before"]
    estimate = _estimate(case, _adapter(name))
    figures = f"{name}: used {cost.format_size(used)}, estimated {cost.format_size(estimate)}"
    assert used <= estimate, figures
    # ... and not wildly above it: a bound ten times too high would refuse checks that fit.
    assert estimate < 10 * max(used, 64 << 20), figures
