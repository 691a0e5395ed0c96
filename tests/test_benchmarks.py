"""The benchmark script runs and says what it measured (its figures themselves are for benchmarks/,
not for assertions: the machine is shared and noisy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_reference_and_report_sections_write_their_figures(tmp_path: Path) -> None:
    sections = ["reference", "report"] if shutil.which("chromedriver") else ["reference"]
    out = tmp_path / "bench.json"
    command = [sys.executable, "benchmarks/run.py", "--only", *sections, "--repeat", "1"]
    command += ["--report-sizes", "300", "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())["sections"]
    reference = figures["reference"]
    assert reference["forward_ratio"] == pytest.approx(reference["reference_s"] / reference["torch_s"])
    assert reference["reference_s"] > 0 and reference["torch_s"] > 0
    assert "reference.forward_ratio" in result.stdout and "<=2" in result.stdout  # the table names the goal
    if "report" in sections:
        report = figures["report"]["300"]
        assert report["bytes"] > 0 and 0 < report["usable_s"] < 60


def test_collection_section_counts_what_it_collected(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    command = [sys.executable, "benchmarks/run.py", "--only", "collection", "--sweep-cases", "400", "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    collection = json.loads(out.read_text())["sections"]["collection"]
    assert collection["sweep_cases"] >= 400 and collection["sweep_items"] == collection["sweep_cases"]
    assert collection["large_tier"]["items"] >= 100_000
    assert 0 < collection["large_tier"]["peak_rss_gib"] < 16
