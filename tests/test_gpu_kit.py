"""The GPU kit (benchmarks/gpu/run.sh), dry-run on the CPU: the GPU targets run on the CPU under
their GPU ids (CONFORMANCE_GPU_STAND_IN=cpu), so that a lent device is one call of a script whose
every step has already run here: selection, the budget, results, the merged report, the account."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.projects import REPO, child_environment


def kit_environment(**extra: str) -> dict[str, str]:
    """The kit runs `$PYTHON -m pytest` (python3 on the device image): here, the interpreter running
    these tests, whatever `python3` is first on PATH (one without pytest-xdist refuses `-n`)."""
    return child_environment(PYTHON=sys.executable, **extra)


def test_the_gpu_kit_runs_end_to_end_with_the_gpu_pointed_at_the_cpu(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "gpu"
    env = kit_environment(CONFORMANCE_GPU_STAND_IN="cpu", CONFORMANCE_GPU_KIT_WORKERS="1")
    finished = subprocess.run(
        # One family of the documents' cases (336 GPU records): every step of the kit, in seconds.
        [str(REPO / "benchmarks" / "gpu" / "run.sh"), str(out), "-k", "documents and tf-4x4 and not hvp and not grad"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    produced = sorted(p.name for p in out.iterdir())
    assert produced == ["ACCOUNT.md", "index.html", "merged.json.gz", "pytest.log", "pytest.status", "results.json.gz"]
    assert len(produced) <= 8, "what comes back from a device: at most 8 files"
    results = json.loads(gzip.decompress((out / "results.json.gz").read_bytes()))
    assert results["environment"]["gpu_stand_in"] == "cpu"
    records = results["results"]
    assert records and all(r["device"] == "gpu" for r in records)
    ran = {r["framework"] for r in records if r["outcome"] not in ("skip", "unsupported")}
    assert {"torch", "jax"} <= ran, "the GPU targets ran (on the CPU), not skipped"
    assert not {r["framework"] for r in records} - {"torch", "jax", "onnxruntime"}, "only the device image's frameworks"
    account = (out / "ACCOUNT.md").read_text()
    assert "**Dry run**" in account and f"{len(records)} GPU records" in account
    assert "| torch |" in account and "| jax |" in account
    assert (out / "pytest.status").read_text().strip() in ("0", "1")
    assert "<html" in (out / "index.html").read_text()[:2000].lower()


def test_a_kit_run_the_budget_stops_still_reports_what_finished(tmp_path: Path) -> None:
    """The device allows one call of a few minutes: past the budget the checks are stopped, and the
    results streamed so far still make the report and the account, which says the run was cut."""
    pytest.importorskip("torch")
    out = tmp_path / "gpu"
    env = kit_environment(
        CONFORMANCE_GPU_STAND_IN="cpu", CONFORMANCE_GPU_KIT_WORKERS="1", CONFORMANCE_GPU_KIT_BUDGET_S="12"
    )
    finished = subprocess.run(
        [str(REPO / "benchmarks" / "gpu" / "run.sh"), str(out), "-k", "documents"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert (out / "pytest.status").read_text().strip() == "124"
    assert "the budget stopped the run" in (out / "ACCOUNT.md").read_text()
    assert (out / "index.html").exists() and (out / "merged.json.gz").exists()
