"""The oneDNN known divergences state exactly the geometries that misbehave.

Every small geometry without a valid output goes through TensorFlow started with oneDNN on (the
suite's own child-process mechanism), and the real `cases/expectations.toml` is applied to each
record: a geometry oneDNN gets wrong must be excused (xfail), one it gets right (TensorFlow's size
check raises first) must not be matched (an xpass would fail the run). The in-process targets'
entries are evaluated on the same records under their own target ids: on this machine oneDNN may be
off by default, and the geometry rule is the same wherever TensorFlow turns it on.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conformance import expectations, runner
from conformance.adapters import Target
from conformance.adapters import tensorflow as tf_adapters
from conformance.adapters.child import InChildProcess
from conformance.cases import load_file
from conformance.compare import CONFORMANT, Outcome
from conformance.sweeps import record_variables
from tests.projects import not_installed

pytestmark = not_installed("tensorflow")

REPO = Path(__file__).resolve().parent.parent

GEOMETRIES = """
[[sweep]]
id = "g"
seed = 1
channels = 2
out_channels = 2
groups = 2  # depthwise_conv2d's case; conv2d and atrous_conv2d take groups = 1 (the next sweep)
dtypes = ["float32"]
where = ["not valid_output"]
[sweep.axes]
size = [1, 2, 3, 5, [2, 5], [5, 1]]
kernel_size = [2, 3, [3, 1]]
rate = [1, 2, 3, [3, 1]]
stride = [1, 2, 3]
padding = ["VALID", [[1, 1], [0, 1]]]
"""
GEOMETRIES += GEOMETRIES.replace('id = "g"', 'id = "g1"').replace("groups = 2", "groups = 1")

IN_PROCESS = {
    tf_adapters.CONV2D: "tensorflow.conv2d-cpu",
    tf_adapters.DEPTHWISE_CONV2D: "tensorflow.depthwise_conv2d-cpu",
    tf_adapters.ATROUS_CONV2D: "tensorflow.atrous_conv2d-cpu",
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list:  # type: ignore[type-arg]
    path = tmp_path_factory.mktemp("onednn") / "onednn.toml"
    path.write_text(GEOMETRIES)
    loaded = load_file(path, path.parent)
    assert loaded.errors == []
    assert len(loaded.cases) > 100
    return loaded.cases


@pytest.mark.parametrize("adapter", list(IN_PROCESS), ids=lambda a: a.name)
def test_the_onednn_entries_excuse_exactly_the_geometries_onednn_gets_wrong(adapter: object, cases: list) -> None:  # type: ignore[type-arg]
    entries = expectations.load(REPO / "cases" / "expectations.toml").entries
    child = InChildProcess(adapter, "onednn-on", {"TF_ENABLE_ONEDNN_OPTS": "1"}, devices=("cpu",))  # type: ignore[arg-type]
    target = Target(child, "cpu", "strict")
    seen: Counter[str] = Counter()
    wrong = []
    for case in cases:
        record = runner.run_check(case, target, "float32")
        if record["outcome"] in (Outcome.UNSUPPORTED, Outcome.SKIP):
            continue
        if record.get("runtime", {}).get("onednn_enabled") is not True:
            pytest.skip("this TensorFlow build does not use oneDNN")
        ids = [IN_PROCESS[adapter]] + (["tensorflow.conv2d@onednn-on-cpu"] if adapter is tf_adapters.CONV2D else [])
        for target_id in ids:
            judged = expectations.apply({**record, "target": target_id}, entries, environ={})
            seen[judged["outcome"]] += 1
            if judged["outcome"] not in {o.value for o in CONFORMANT} | {Outcome.XFAIL.value}:
                variables = {
                    k: v for k, v in (record_variables(judged) or {}).items() if k.startswith(("padded", "unclamped"))
                }
                wrong.append(f"{target_id} {case.id}: {judged['outcome']} {variables}: {judged['message'][:160]}")
    assert not wrong, "\n".join(wrong)
    # Both kinds occur, so the entry can be wrong either way.
    assert seen[Outcome.XFAIL.value] > 0 and seen[Outcome.EXPECTED_ERROR.value] > 0, seen
