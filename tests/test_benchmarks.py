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
    """The large tier through NumPy's targets only: the whole tier's 320,000 items took half a minute
    to collect, and counting them is the same for any target."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "benchmarks/run.py", "--only", "collection", "--sweep-cases", "400", "--json", str(out)]
    command += ["--collection-mark", "large and numpy"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    collection = json.loads(out.read_text())["sections"]["collection"]
    assert collection["sweep_cases"] >= 400 and collection["sweep_items"] == collection["sweep_cases"]
    assert collection["large_tier"]["items"] == 6_240  # the large tier's cases, one NumPy item each
    assert 0 < collection["large_tier"]["peak_rss_gib"] < 16


def test_million_section_runs_shards_merges_and_opens_the_report(tmp_path: Path) -> None:
    """The million-check section's whole pipeline at a few thousand checks: scaled corpus, three
    shards, merge, report, browser. On NumPy's and torch's targets: the pipeline is the same for
    every framework, and each shard's workers then import two of them instead of all seven (about
    a fifth of the minutes)."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "benchmarks/run.py", "--only", "million", "--million-checks", "2500", "--workers", "1"]
    command += ["--large-mark", "large and cpu and (numpy or torch)"]
    result = subprocess.run([*command, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    million = json.loads(out.read_text())["sections"]["million"]
    # 48 geometries x round(130 x 2500 / 324,480) = 1 replicate x 6 NumPy and torch CPU checks, in three shards.
    assert million["records"] == 48 * 1 * 6 and len(million["shard_wall_s"]) == 3 and all(million["shard_wall_s"])
    assert 0 < million["peak_rss_gib_controller"] <= million["peak_rss_gib_any_process"] < 16
    assert million["report_bytes"] > 0 and million["results_bytes"] > 0
    if shutil.which("chromedriver"):
        assert 0 < million["report_usable_s"] < 60


def test_the_checkouts_section_needs_the_other_checkout() -> None:
    command = [sys.executable, "benchmarks/run.py", "--only", "checkouts"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "needs --before CHECKOUT" in result.stderr


def test_a_baseline_needs_its_checkout_and_a_saved_one_must_hold_a_baseline_run(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "benchmarks/run.py", *args]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)

    result = run("--only", "baseline")
    assert result.returncode == 2 and "needs --baseline CHECKOUT" in result.stderr
    (tmp_path / "other.json").write_text(json.dumps({"created": "x", "sections": {"reference": {}}}))
    result = run("--only", "checkouts", "--before", str(tmp_path), "--baseline-from", str(tmp_path / "other.json"))
    assert result.returncode == 2 and "no baseline run" in result.stderr
    result = run("--only", "checkouts", "--before", str(tmp_path), "--baseline-from", "x.json", "--baseline", ".")
    assert result.returncode == 2 and "instead of --baseline" in result.stderr


def test_a_saved_baseline_is_read_from_either_section_and_says_where_it_came_from(tmp_path: Path) -> None:
    from benchmarks.run import saved_baseline

    machine = {"python": "3.11", "cpus": 2, "platform": "linux"}
    alone = {"created": "t1", "machine": machine, "sections": {"baseline": {"wall_s": 1351.0}}}
    within = {"created": "t2", "machine": machine, "sections": {"checkouts": {"baseline": {"wall_s": 900.0}}}}
    (tmp_path / "alone.json").write_text(json.dumps(alone))
    (tmp_path / "within.json").write_text(json.dumps(within))
    assert saved_baseline(tmp_path / "alone.json", machine) == {
        "wall_s": 1351.0, "saved_in": str(tmp_path / "alone.json"), "saved_at": "t1"
    }  # fmt: skip
    assert saved_baseline(tmp_path / "within.json", machine)["wall_s"] == 900.0


def test_checkout_ratios_compare_cold_with_cold_where_both_sides_keep_a_cache() -> None:
    from benchmarks.run import checkout_ratios

    walls = {"baseline": 1000.0, "before_1": 800.0, "after_cold": 600.0, "after_warm": 400.0, "before_2": 640.0}
    walls["after_whole_warm"] = 560.0
    runs = {name: {"wall_s": wall} for name, wall in walls.items()}
    cached = checkout_ratios(runs, before_kept_a_cache=True)
    assert cached["after_cold_over_before"] == 0.75 and cached["after_warm_over_before_warm"] == 0.625
    assert cached["before_warm_speedup_over_cold"] == 1.25 and cached["warm_speedup_over_cold"] == 1.5
    assert cached["after_cold_over_baseline"] == 0.6 and "before_runs_spread" not in cached
    assert cached["after_whole_warm_over_before_warm"] == 560 / 640
    # A before side without a cache ran cold twice: their mean is the baseline, their spread the drift.
    uncached = checkout_ratios({k: v for k, v in runs.items() if k != "baseline"}, before_kept_a_cache=False)
    assert uncached["after_cold_over_before"] == 600 / 720 and uncached["before_runs_spread"] == 160 / 720
    assert "after_cold_over_baseline" not in uncached and uncached["after_whole_warm_over_before_warm"] == 560 / 720


def test_a_run_says_which_workers_it_replaced_and_how_often_caches_were_released() -> None:
    from benchmarks.run import retirements

    # As the controller writes them: a retired worker's usage carries the check after which it retired.
    processes = {
        "gw0": {"checks": 900, "releases": 4, "retired": "large/a torch.conv2d-cpu float32 (it held 1.6 GiB)"},
        "gw1": {"checks": 1000, "releases": 5},
        "gw2": {"checks": 100, "releases": 0},
        "controller": {"checks": 0, "releases": 0},
    }
    assert retirements(processes) == {
        "workers_retired": ["large/a torch.conv2d-cpu float32 (it held 1.6 GiB)"],
        "cache_releases": 9,
    }
    assert retirements({}) == {"workers_retired": [], "cache_releases": 0}


def test_a_large_run_s_harness_cost_is_given_per_record_as_well_as_as_a_ratio() -> None:
    """The overhead ratio divides by the frameworks' time; the cost per record does not, so two
    machines (or sessions) whose frameworks differ in speed compare on it."""
    from benchmarks.run import _large_figures

    run = {"wall_s": 100.0, "workers": 2, "bare_s": 150.0, "records": 1000, "peak_rss_bytes_per_worker": {}}
    run |= {"peak_rss_bytes_controller": None, "peak_rss_bytes_all": 2**30}
    figures = _large_figures(run)
    assert figures["overhead_ratio"] == pytest.approx(200 / 150)
    assert figures["harness_ms_per_record"] == pytest.approx(50.0)  # (200 - 150) worker-seconds / 1000 records
    faster_frameworks = _large_figures(run | {"wall_s": 90.0, "bare_s": 130.0})
    assert faster_frameworks["harness_ms_per_record"] == figures["harness_ms_per_record"]
    assert faster_frameworks["overhead_ratio"] > figures["overhead_ratio"]
    assert _large_figures(run | {"records": 0})["harness_ms_per_record"] == pytest.approx(50_000.0)


def test_a_runs_items_split_into_the_harness_tests_and_the_checks(tmp_path: Path) -> None:
    from benchmarks.run import _junit_seconds

    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_plugin" name="test_a" time="1.5"/>'
        '<testcase classname="cases.basics.toml" name="doc[torch.conv2d-cpu-float32]" time="0.25"/>'
        '<testcase classname="tests.test_isolation" name="test_b" time="2"/>'
        "</testsuite></testsuites>"
    )
    assert _junit_seconds(tmp_path / "junit.xml") == {"harness_tests": 3.5, "checks": 0.25}


def test_a_cpu_profile_is_split_by_process_and_by_what_the_harness_was_doing() -> None:
    """py-spy's raw records, one per stack: a worker's command line holds a newline (xdist's
    `python -c "import sys\\nexec(...)"`), so records end at their count, not at a line's end."""
    from benchmarks.cpu_profile import summarize

    worker = 'process 1:"pytest cases";process 2:"python -c import sys\nexec(eval(sys.stdin.readline()))";'
    serve = 'process 3:"python -c from conformance.adapters.child import serve\n serve()";'
    child = 'process 1:"pytest cases";process 2:"python -c x";' + serve
    protocol = "pytest_runtest_protocol (_pytest/runner.py:1);ConformanceItem.runtest (conformance/plugin/items.py:84);"
    check = protocol + "guarded (conformance/plugin/items.py:178);run_check (conformance/runner.py:100);"
    raw = "".join(
        f"{stack} {count}\n"
        for stack, count in [
            ('process 1:"pytest cases";DSession.loop_once (xdist/dsession.py:154)', 8),
            (worker + check + "FrameworkCall.run (conformance/adapters/base.py:286);conv (torch/nn.py:1)", 400),
            (worker + check + "classify (conformance/compare.py:200);_classify_values (compare.py:300)", 20),
            (worker + protocol + "settle (conformance/plugin/items.py:203)", 12),
            (worker + "pytest_runtest_protocol (r.py:1);WorkerInteractor.sendevent (xdist/remote.py:126)", 4),
            (worker + "pytest_runtest_protocol (r.py:1);CaptureManager.item_capture (capture.py:865)", 4),
            (worker + "pytest_collection (main.py:1)", 2),
            (worker + "_find_and_load (<frozen importlib._bootstrap>:1)", 6),
            (worker + check + "make_record (conformance/check_records.py:56)", 1),
            (child + "serve (conformance/adapters/child.py:375);_answer (conformance/adapters/child.py:352)", 16),
            (child + "serve (conformance/adapters/child.py:375);read_message (conformance/adapters/child.py:147)", 8),
        ]
    )
    summary = summarize(raw, rate=2.0)
    assert summary["controller"] == {"total": 4.0, "all": 4.0}
    assert summary["child"] == {"total": 12.0, "framework call": 8.0, "messages": 4.0}
    assert summary["worker"] == {
        "total": 224.5,  # 449 samples
        "framework call": 200.0,
        "harness: classify": 10.0,
        "harness: settle": 6.0,
        "imports": 3.0,
        "xdist reports": 2.0,
        "pytest items": 2.0,
        "collection": 1.0,
        "harness: (each under 0.5%)": 0.5,  # make_record: 1 sample of 449
    }
