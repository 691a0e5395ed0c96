"""Determinism: generated inputs are the same bytes in every process and on every machine (golden
hashes), and the repeat mode flags a target whose output changes between identical calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance import generators
from conformance.adapters import Target
from conformance.adapters.numpy import ADAPTERS as NUMPY_ADAPTERS
from conformance.cases import load_file, load_paths, materialize
from conformance.runner import run_check
from tests.fault_adapters import Jitter
from tests.projects import child_environment, write_project

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).with_name("data") / "tensor_hashes.json"


def test_every_generated_tensor_matches_its_golden_hash() -> None:
    # If this fails, every recorded result's input changed: never regenerate the file casually
    # (python -m conformance hashes cases -o tests/data/tensor_hashes.json).
    golden = json.loads(GOLDEN.read_text())["hashes"]
    loaded = load_paths([REPO / "cases"])
    here = {
        f"{case.qualified_id}/{dtype}": {"input": data.x_hash, "kernel": data.w_hash}
        for case in loaded.cases
        if case.tier != "large"  # (as `conformance hashes` leaves them out)
        for dtype in case.dtypes
        for data in [materialize(case, dtype)]
    }
    assert here == golden


@pytest.mark.parametrize("count", [1, 7, 16, 100])
def test_the_normal_generator_s_blocks_do_not_change_its_values(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """The corpus' tensors fit in one block of the normal generator, so the golden hashes alone would
    not see a block boundary that shifts a word: blocks of 7 elements give the values of one pass
    over all the words, the generator's definition written out."""
    words = np.random.PCG64(3).random_raw(count * 12)
    uniforms = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    defined = uniforms.reshape(count, 12)[:, 0].copy()
    for term in range(1, 12):
        defined += uniforms.reshape(count, 12)[:, term]
    defined -= 6.0
    monkeypatch.setattr(generators, "_NORMAL_BLOCK", 7)
    blocked = generators.generate({"generator": "normal", "seed": 3}, (count,))
    assert blocked.tobytes() == defined.tobytes()


def test_other_processes_generate_the_same_bytes() -> None:
    """Another interpreter, with a hash seed other than this one's (no dict or set order may leak into
    the data), generates the golden bytes that this process generates (the test above)."""
    seed = "0" if os.environ.get("PYTHONHASHSEED") == "12345" else "12345"
    command = [sys.executable, "-m", "conformance", "hashes", "cases"]
    env = {**os.environ, "PYTHONHASHSEED": seed}
    output = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    assert json.loads(output)["hashes"] == json.loads(GOLDEN.read_text())["hashes"]


CASE = """
[[case]]
id = "c"
input = { generator = "normal", seed = 4, shape = [1, 9, 9, 3] }
kernel = { generator = "normal", seed = 5, shape = [3, 3, 3, 4] }
rate = 2
padding = "SAME"
"""


@pytest.mark.parametrize(("repeat", "jitter_outcome"), [(1, "pass"), (3, "nondeterministic")])
def test_repeat_mode_flags_only_the_target_that_changes(tmp_path: Path, repeat: int, jitter_outcome: str) -> None:
    (tmp_path / "r.toml").write_text(CASE)
    (case,) = load_file(tmp_path / "r.toml", tmp_path).cases
    jittery = run_check(case, Target(Jitter(), "cpu", "strict"), "float32", repeat=repeat)
    assert jittery["outcome"] == jitter_outcome, jittery["message"]
    if repeat > 1:
        assert "3 different outputs in 3 calls" in jittery["message"] and "largest difference" in jittery["message"]
        assert jittery["error_ratio"] is not None  # the figures of the first call are kept
    steady = run_check(case, Target(NUMPY_ADAPTERS[0], "cpu", "strict"), "float32", repeat=repeat)
    assert steady["outcome"] == "pass"


def test_repeat_run_of_the_real_frameworks(tmp_path: Path) -> None:
    """Every installed framework on the reference documents' cases, each called twice per check."""
    documents = (REPO / "cases" / "documents.toml").read_text()
    write_project(tmp_path, ["Jitter"], {"documents.toml": documents})
    out = tmp_path / "results.json"
    # One worker: a second would import every framework and start every framework child again, which
    # costs more than it saves where the outer run keeps both cores busy.
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "1", "--conformance-repeat", "2"]
    # Keras on one backend (torch's, the quickest): the other two compute with kernels checked here
    # already, and their per-geometry compilations would double this test's minutes.
    command += ["--expectations", "none", "-m", "cpu and (not keras or keras-torch)", "-k", "float32 or float16"]
    command += ["--conformance-json", str(out), "--conformance-html", "none"]
    env = child_environment()
    subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=600, check=False)
    records = json.loads(out.read_text())["results"]
    # Exact-integer cases make the jitter a mismatch too; the repeat finding is then added to its message.
    flagged = {
        r["target"]
        for r in records
        if "not bitwise reproducible" in (r["message"] or "") and r["expect"] != "no-valid-output"
    }
    unexpected = [
        (r["case"], r["target"], r["dtype"], r["message"])
        for r in records
        if r["target"] in flagged - {"faulty.jitter-cpu"} and "not bitwise reproducible" in (r["message"] or "")
    ]
    assert flagged == {"faulty.jitter-cpu"}, unexpected
    # oneDNN's answer where no output exists is uninitialised memory (tensorflow#64396): values where an
    # error or an empty tensor is due, which may or may not differ call to call (with one thread per
    # worker they often repeat).
    garbage = [
        r for r in records if r["target"] == "tensorflow.conv2d@onednn-on-cpu" and r["expect"] == "no-valid-output"
    ]
    assert garbage and all(r["outcome"] in ("expected-error", "missing-error", "nondeterministic") for r in garbage)
    jitter = [r for r in records if r["target"] == "faulty.jitter-cpu" and r["expect"] != "no-valid-output"]
    assert jitter and all("not bitwise reproducible" in r["message"] for r in jitter)
    assert any(r["framework"] == "numpy" and r["outcome"] == "pass" for r in records)


def test_an_output_hash_is_the_one_earlier_results_carry() -> None:
    """Diffs compare output hashes across runs and harness versions: the hash of the output's dtype,
    shape and bits (C order) must stay what earlier results files hold, whatever the array's strides
    or format (the values below are from the harness before its hash stopped copying the output)."""
    import ml_dtypes

    from conformance.judging import output_hash

    assert output_hash(np.arange(6, dtype=np.float32).reshape(2, 3).T) == "af77613a63fcfaf1"  # (not contiguous)
    assert output_hash(np.float64(-0.0)) == "b52eaece297e2e0a"  # (rank 0)
    assert output_hash(np.arange(4).astype(ml_dtypes.bfloat16)) == "c1a973eded7e1099"
    assert output_hash(None) is None
