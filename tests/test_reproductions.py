"""Each framework's copy-paste reproduction, executed as written, gives what the adapter returned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance.adapters import ADAPTERS, Target, Unavailable
from conformance.cases import load_file
from conformance.runner import call_params, prepare, run_check

CASE = """
[[case]]
id = "repro"
input = { generator = "integers", seed = 1, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 2, low = -2, high = 2, shape = [2, 3, 2, 2] }
rate = [2, 1]
padding = [[1, 2], [0, 1]]
"""


# Forward calls that run on the CPU; derivatives have their own test (tests/test_derivatives.py).
FORWARD_CPU = [a for a in ADAPTERS if a.framework != "numpy" and a.quantity == "output" and "cpu" in a.devices]


@pytest.mark.parametrize("adapter", FORWARD_CPU, ids=lambda a: a.name)
def test_reproduction_runs_and_agrees(adapter, tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(CASE)
    (case,) = load_file(path).cases
    target = Target(adapter, "cpu", "strict")
    try:
        adapter.check_available("cpu")
    except Unavailable as exc:
        pytest.skip(str(exc))
    record = run_check(case, target, "float32")
    if record["outcome"] == "unsupported":
        pytest.skip(record["message"])
    assert record["outcome"] == "pass", record["message"]
    namespace: dict = {}
    exec(record["reproduction"], namespace)  # the text a user would paste
    expected = prepare(case, "float32").reference
    np.testing.assert_array_equal(np.asarray(namespace["y"], dtype=np.float64), expected)
    assert call_params(case, "float32").geometry.pads == ((1, 2), (0, 1))
