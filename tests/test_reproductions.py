"""Every target's copy-paste reproduction, executed as written, gives the bits the target returned.

Every adapter in ADAPTERS that runs on the CPU (NumPy's im2col, each framework's plain calls, its
execution modes, oracles, derivatives and child-process variants) runs one check here; its record's
reproduction is executed and its `y` (`g` for a derivative) compared bit for bit with what the
adapter's own `run` returned on the same data. A GPU-only target is listed, and skipped, with why.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from conformance import derivatives
from conformance.adapters import ADAPTERS, OUTPUT, QUANTITIES, Adapter, ConvCall, Target, Unavailable
from conformance.cases import Case, load_file
from conformance.runner import prepare, run_check

CASES = """
[defaults]
derivatives = 2
dtypes = ["float32"]

[[case]]
id = "explicit"
description = "Asymmetric explicit pads, per-axis rate: the pads every API spells differently."
input = { generator = "integers", seed = 1, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 2, low = -2, high = 2, shape = [2, 3, 2, 2] }
rate = [2, 1]
padding = [[1, 2], [0, 1]]

[[case]]
id = "same"
description = "SAME at rate 2, for the APIs that take only SAME/VALID (and the explicit-pads oracle)."
input = { generator = "integers", seed = 3, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 4, low = -2, high = 2, shape = [3, 3, 2, 2] }
rate = 2
padding = "SAME"

[[case]]
id = "same-rate1"
description = "TensorFlow's CPU conv2d gradient refuses rates > 1 (a known divergence): rate 1 for it."
input = { generator = "integers", seed = 5, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 6, low = -2, high = 2, shape = [3, 3, 2, 2] }
padding = "SAME"

[[case]]
id = "depthwise"
description = "For depthwise_conv2d."
input = { generator = "integers", seed = 7, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 8, low = -2, high = 2, shape = [3, 3, 1, 4] }
rate = 2
padding = "SAME"
groups = 2
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    path = tmp_path_factory.mktemp("reproductions") / "r.toml"
    path.write_text(CASES)
    loaded = load_file(path)
    assert not loaded.errors
    return loaded.cases


def _adapter_call(case: Case, adapter: Adapter) -> ConvCall:
    data = prepare(case, "float32").data
    call = ConvCall(data.x, data.w, case.rate, case.stride, case.padding, case.geometry, case.groups, "float32")
    if adapter.quantity == OUTPUT:
        return call
    t = derivatives.tangents(case, "float32")
    return ConvCall(
        data.x, data.w, case.rate, case.stride, case.padding, case.geometry, case.groups, "float32",
        t.cotangent, t.direction_input, t.direction_kernel,
    )  # fmt: skip


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
def test_the_reproduction_gives_the_bits_the_target_returned(adapter: Adapter, cases: list[Case]) -> None:
    if "cpu" not in adapter.devices:
        pytest.skip(f"{adapter.name} runs on a GPU only; its reproduction is the CPU's twice over")
    try:
        adapter.check_available("cpu")
    except Unavailable as exc:
        pytest.skip(str(exc))
    target = Target(adapter, "cpu", "strict")
    records = {case.id: run_check(case, target, "float32") for case in cases}
    passing = [case for case in cases if records[case.id]["outcome"] == "pass"]
    if not passing and all(r["outcome"] == "unsupported" for r in records.values()):
        pytest.skip(f"unsupported on this machine: {records[cases[0].id]['message']}")
    assert passing, {case_id: (r["outcome"], r["message"]) for case_id, r in records.items()}
    case = passing[0]
    record = records[case.id]
    namespace: dict[str, Any] = {}
    exec(record["reproduction"], namespace)  # the text a user would paste
    name = "y" if adapter.quantity == OUTPUT else "g"
    value = namespace[name]
    pasted = np.asarray(value.detach() if hasattr(value, "detach") else value)
    returned = adapter.run(_adapter_call(case, adapter), "cpu", "strict")
    assert pasted.dtype == returned.dtype and pasted.shape == returned.shape
    np.testing.assert_array_equal(pasted.view(np.uint32), returned.view(np.uint32))  # every bit


def test_every_target_kind_is_covered() -> None:
    """The list above is ADAPTERS itself, so a new adapter is covered the day it is added."""
    names = {a.name for a in ADAPTERS}
    assert "numpy.im2col" in names and "tensorflow.conv2d@onednn-on" in names
    assert {f"torch.conv2d@{q}" for q in QUANTITIES} <= names
