"""`diff` and `merge` on results files written by real runs of the plugin (numpy target, in subprocesses).

The regressed run monkeypatches the NumPy adapter through a conftest, so the second results file
differs from the first in exactly the cells the patch touches.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conformance import diff as diffing
from conformance.cli import main as cli_main
from conformance.merging import merge
from conformance.results import atomic_write, write_json
from conformance.run_environment import run_label

CORPUS = """
[defaults]
dtypes = ["float32", "float64"]

[[case]]
id = "victim"
input = { generator = "normal", seed = 1, shape = [1, 7, 7, 2] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 2] }
rate = 2
padding = "SAME"

[[case]]
id = "bystander"
input = { generator = "normal", seed = 3, shape = [1, 8, 6, 1] }
kernel = { generator = "normal", seed = 4, shape = [2, 2, 1, 3] }
rate = 3
padding = "VALID"
"""

# Breaks one output pixel, only for the input shape of case "victim", only when asked to.
REGRESSING_CONFTEST = """
import os
import numpy as np
from conformance.adapters import numpy as numpy_adapter

if os.environ.get("BREAK_VICTIM"):
    original = numpy_adapter.NumpyIm2col.run

    def broken(self, call, device, precision):
        y = original(self, call, device, precision)
        if call.x.shape == (1, 7, 7, 2):
            y = y.copy()
            y[0, 3, 3, 1] += 0.5
        return y

    numpy_adapter.NumpyIm2col.run = broken
"""


def run_suite(directory: Path, name: str, *, broken: bool) -> Path:
    out = directory / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if k != "BREAK_VICTIM"}
    if broken:
        env["BREAK_VICTIM"] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "conformance.plugin", "-p", "no:cacheprovider"]
    command += ["--cases", "mycases", "--conformance-json", str(out), "--conformance-html", "none", "-m", "numpy"]
    subprocess.run(command, cwd=directory, env=env, capture_output=True, timeout=300, check=False)
    assert out.exists(), f"the {name} run wrote no results"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three real runs, made once for the module: two clean, one with the victim broken."""
    directory = tmp_path_factory.mktemp("runs")
    (directory / "mycases").mkdir()
    (directory / "mycases" / "mine.toml").write_text(CORPUS)
    (directory / "conftest.py").write_text(REGRESSING_CONFTEST)
    (directory / "pytest.ini").write_text("[pytest]\n")  # keep this directory its own rootdir
    return {name: run_suite(directory, name, broken=name == "broken") for name in ("clean1", "clean2", "broken")}


def test_diff_names_exactly_the_regressed_cells_and_exits_1(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    page = tmp_path / "diff.html"
    status = cli_main(["diff", str(runs["clean1"]), str(runs["broken"]), "--html", str(page)])
    out = capsys.readouterr().out
    assert status == 1
    section = out.split("REGRESSED")[1].split("\n\n")[0].split("diff page:")[0]
    regressed = [line.strip() for line in section.splitlines()[1:] if line.strip()]
    assert len(regressed) == 2
    for line, dtype in zip(regressed, ("float32", "float64"), strict=True):
        assert line.startswith(f"mine/victim [numpy.im2col-cpu, {dtype}]: pass (error/bound ")
        assert "-> mismatch (error/bound " in line
    assert "bystander" not in out
    assert "mine/victim" in page.read_text()


def test_two_clean_runs_report_nothing_and_exit_0(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["diff", str(runs["clean1"]), str(runs["clean2"])]) == 0
    assert "no differences" in capsys.readouterr().out


def test_the_fix_shows_as_improved(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["diff", str(runs["broken"]), str(runs["clean1"])]) == 0
    out = capsys.readouterr().out
    assert "2 improved" in out and "regressed" not in out.lower().replace("no differences", "")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_drift_coverage_and_presence_categories(runs: dict[str, Path]) -> None:
    base = load(runs["clean1"])
    new = copy.deepcopy(base)
    passing = [r for r in new["results"] if r["outcome"] == "pass" and r["error_ratio"]]
    passing[0]["error_ratio"] = max(0.5, passing[0]["error_ratio"] * 10)  # grew 10x, still passing
    passing[1]["outcome"], passing[1]["message"] = "skip", "framework missing"
    removed = new["results"].pop(new["results"].index(passing[2]))
    added = {**removed, "case": "mine/new-case"}
    new["results"].append(added)
    result = diffing.diff(base, new, drift_factor=2.0)
    assert [c.key for c in result.changes["drift"]] == [(passing[0]["case"], passing[0]["target"], passing[0]["dtype"])]
    assert [c.key[0] for c in result.changes["coverage-lost"]] == [passing[1]["case"]]
    assert [c.key[0] for c in result.changes["disappeared"]] == [removed["case"]]
    assert [c.key[0] for c in result.changes["appeared"]] == ["mine/new-case"]
    assert not result.failed() and result.failed(("drift",))
    # Known divergences do not hide a change: the observed outcome is compared.
    known = copy.deepcopy(base)
    target = next(r for r in known["results"] if r["outcome"] == "pass")
    target.update(outcome="xfail", observed_outcome="mismatch")
    assert len(diffing.diff(base, known).changes["regressed"]) == 1


def test_merge_keeps_a_column_per_version_and_prefers_evaluated_over_skipped(runs: dict[str, Path]) -> None:
    cpu_box = load(runs["clean1"])
    other_version = copy.deepcopy(cpu_box)
    for record in other_version["results"]:
        record["framework_version"] = "9.9.9"
    gpu_box = copy.deepcopy(cpu_box)
    for record in cpu_box["results"]:
        if record["device"] == "gpu":
            assert record["outcome"] == "skip"
    for record in gpu_box["results"]:
        if record["device"] == "gpu":
            record["outcome"] = "pass"
    merged = merge([("cpu", cpu_box), ("gpu", gpu_box), ("newer", other_version)])
    assert [r["label"] for r in merged["runs"]][-1] == "newer" or merged["runs"][-1]["source"] == "newer"
    versions = {r["framework_version"] for r in merged["results"]}
    assert versions == {cpu_box["results"][0]["framework_version"], "9.9.9"}
    same_version = [r for r in merged["results"] if r["framework_version"] != "9.9.9"]
    assert len(same_version) == len(cpu_box["results"])
    assert all(r["outcome"] != "skip" for r in same_version), "the GPU box's results replace the CPU box's skips"
    assert merged["conflicts"] == []
    # Two runs that evaluated the same check differently: kept as the worse, listed as a conflict.
    flaky = copy.deepcopy(gpu_box)
    victim = next(r for r in flaky["results"] if r["device"] == "cpu" and r["outcome"] == "pass")
    victim["outcome"] = "mismatch"
    merged = merge([("a", gpu_box), ("b", flaky)])
    assert len(merged["conflicts"]) == 1
    kept = [
        r
        for r in merged["results"]
        if (r["case"], r["target"], r["dtype"]) == (victim["case"], victim["target"], victim["dtype"])
    ]
    assert [r["outcome"] for r in kept] == ["mismatch"]
    assert merged["summary"]["total"] == len(gpu_box["results"])


def test_merge_puts_machine_profiles_side_by_side(runs: dict[str, Path], tmp_path: Path) -> None:
    """The same checks under two profiles are two columns, not a conflict; the run labels say which."""
    from conformance.report import embedded_data, write_report

    host = load(runs["clean1"])
    host["environment"]["profile"] = "host"  # (the host's defaults, whatever variables this run was made with)
    for record in host["results"]:
        record.pop("profile", None)
    capped = copy.deepcopy(host)
    capped["environment"]["profile"] = "avx2"
    for record in capped["results"]:
        record["profile"] = "avx2"
    capped["results"][0]["outcome"] = "mismatch"  # (differently, but in a column of its own)
    merged = merge([("host", host), ("avx2", capped)])
    assert len(merged["results"]) == 2 * len(host["results"]) and merged["conflicts"] == []
    assert [run["environment"]["profile"] for run in merged["runs"]][1] == "avx2"
    assert run_label(capped["environment"]).split(";")[0].endswith(" [avx2]")  # (a run without a file name)
    assert run_label(host["environment"]) != run_label(capped["environment"])
    # Each profile's run writes results.json: files of one name are named by their runs.
    for name, document in (("host", host), ("avx2", capped)):
        (tmp_path / name).mkdir()
        atomic_write(tmp_path / name / "results.json", lambda handle, d=document: write_json(d, handle))
    out = tmp_path / "merged.json"
    cli_main(
        ["merge", str(tmp_path / "host" / "results.json"), str(tmp_path / "avx2" / "results.json"), "-o", str(out)]
    )
    labels = [run["label"] for run in load(out)["runs"]]
    assert labels == [run_label(host["environment"]), run_label(capped["environment"])] and "[avx2]" in labels[1]
    page = tmp_path / "profiles.html"
    write_report(merged, page)
    columns = {c["key"]: c["version"] for c in embedded_data(page.read_text())["columns"]}
    version = host["results"][0]["framework_version"]
    target = host["results"][0]["target"]
    assert columns[f"{target}@{version}"] == columns[f"{target}@{version} [avx2]"].removesuffix(" [avx2]")


def test_merge_cli_writes_file_and_report(runs: dict[str, Path], tmp_path: Path) -> None:
    out, page = tmp_path / "merged.json", tmp_path / "merged.html"
    assert cli_main(["merge", str(runs["clean1"]), str(runs["broken"]), "-o", str(out), "--html", str(page)]) == 0
    merged = load(out)
    assert merged["kind"] == "merged" and len(merged["runs"]) == 2
    assert len(merged["conflicts"]) == 2  # same versions, victim differs: both dtypes
    assert page.stat().st_size > 0


def test_diff_refuses_unreadable_input(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read a results file"):
        cli_main(["diff", str(bad), str(bad)])


def test_diff_reads_both_files_in_step_and_holds_only_what_it_lists(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files in the suite's layout are read one record at a time, in key order; a file in another
    order is sorted first (not misread as appeared/disappeared); past KEEP_CHANGES a category is
    counted, not listed."""
    from conformance.record_files import open_results_json, scratch_directory
    from conformance.results import atomic_write, write_json

    stores_before = set(scratch_directory().glob(".records-*"))
    base = load(runs["clean1"])
    shuffled = {**base, "results": list(reversed(base["results"]))}
    path = tmp_path / "shuffled.json"
    atomic_write(path, lambda handle: write_json(shuffled, handle))
    opened = open_results_json(path)
    assert opened is not None, "written in the suite's layout: read as it goes"
    same = diffing.diff(base, {**opened[0], "results": opened[1]})
    assert same.compared == len(base["results"]) and not any(same.counts.values())
    # A hand-made file may hold NaN (json.loads reads it): sorted all the same, not refused.
    odd = copy.deepcopy(base)
    odd["results"][0]["error_ratio"] = float("nan")
    assert diffing.diff(base, odd).compared == len(base["results"])
    assert set(scratch_directory().glob(".records-*")) == stores_before, "the diff's sorted copies are removed"

    changed = copy.deepcopy(base)
    for record in changed["results"]:
        record["output_sha256"] = "0" * 16
    monkeypatch.setattr(diffing, "KEEP_CHANGES", 3)
    result = diffing.diff(base, changed)
    bits = sum(r["outcome"] == "pass" and r.get("output_sha256") is not None for r in base["results"])
    assert result.count("bits-changed") == bits > 3 and len(result.changes["bits-changed"]) == 3
    assert f"... and {bits - 3} more" in diffing.text_report(result, limit=50)
    assert set(result.changes["bits-changed"][0].base or {}) <= {
        "outcome", "observed_outcome", "error_ratio", "framework_version", "profile", "message",
    }  # fmt: skip

    # Where no valid output exists, what a target returns is not a function of the inputs (oneDNN's
    # uninitialised memory): new bits there are no change, a new outcome still is.
    garbage = {"case": "g", "target": "t-cpu", "dtype": "float32", "expect": "no-valid-output"}
    before = {"results": [{**garbage, "outcome": "missing-error", "output_sha256": "1" * 16}]}
    same_garbage = {"results": [{**garbage, "outcome": "missing-error", "output_sha256": "2" * 16}]}
    assert not any(diffing.diff(before, same_garbage).counts.values())
    fixed = {"results": [{**garbage, "outcome": "expected-error", "output_sha256": None}]}
    assert diffing.diff(before, fixed).count("improved") == 1
    defined = {"results": [{**garbage, "expect": "reference", "outcome": "pass", "output_sha256": "1" * 16}]}
    bits = {"results": [{**defined["results"][0], "output_sha256": "2" * 16}]}
    assert diffing.diff(defined, bits).count("bits-changed") == 1

    twice = copy.deepcopy(base)
    twice["results"].append({**twice["results"][0], "framework_version": "9.9.9"})
    with pytest.raises(diffing.AmbiguousResults, match=r"9\.9\.9"):
        diffing.diff(base, twice)
