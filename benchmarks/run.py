"""What the harness costs beyond the frameworks, measured in one run on one machine.

    python benchmarks/run.py                          # every section (about 25 minutes on 2 cores)
    python benchmarks/run.py --only reference report  # some sections
    python benchmarks/run.py --compare benchmarks/results/latest.json   # side by side with a saved run

Sections:
  reference   the float64 NumPy reference against PyTorch's float64 CPU convolution (and its two
              gradients) on a 1x64x64x32 input, 3x3x32x32 kernel, rate 2, SAME: time ratio.
  corpus      the default corpus (cases/) with -n 1 and with -n auto, each in a fresh pytest. The
              overhead ratio is wall time x workers divided by the seconds the same checks spent
              loading frameworks, inside framework calls and inside the reference (records and
              workers report these: conformance.timing); 1.0 would mean the harness costs nothing.
              The speed-up of -n auto over -n 1 is given on wall time, on wall time less framework
              loading, and on the checks phase (first check's start to last check's end: no process
              start, collection or report) less framework loading, which the goal applies to.
  collection  expanding a 100,000-case sweep (load_file), collecting it as 100,000 items, and
              collecting the large tier (-m large): time and peak memory of one process, which is
              what each xdist worker holds (every worker collects everything).
  report      rendering 20,000- and 100,000-result reports: time, size, and the time until the page
              is drawn and answers in headless Chromium (needs chromium and chromedriver).
  baseline    the README's command once, cold, on --baseline CHECKOUT (an issue's start), saved on its
              own for a later `--only checkouts --baseline-from FILE` in the same session (opt-in).
  checkouts   the README's command (`pytest -n auto`, each checkout's own) on two checkouts, --before
              (say `git worktree add --detach /tmp/main main`) and --after (this one), alternating: before,
              after from an empty compilation cache, after again on that cache, before again; then,
              warm, the project's whole test command on --after (`pytest -n auto tests cases`: the
              harness's own tests too). Wall time ratios, the cache's size, whether both hold the same
              checks with the same outcomes, and where each run's worker-seconds went (opt-in; about
              an hour on 2 cores).
  large       the large tier itself, `pytest -m "large and cpu" -n auto`: checks, wall time, overhead
              ratio and the same cost per record (milliseconds beyond the frameworks, which the
              frameworks' own speed does not move), the seconds before its first check and after
              its last (the controller's end, the workers idle), peak memory of the controller, of
              each worker and of any process (opt-in: --only large; about 7 minutes on 2 cores).
  shards      the large tier as 3 shards one after another (--conformance-shard K/3), merged: the
              merge against the unsharded run (same checks, outcomes, output hashes) and the cost
              of splitting, against the mean of the unsharded run before the shards and again after
              them (opt-in; reuses the large section's run as the first when both are asked for).
  extended    the extended tier as a new user runs it, `pytest cases -n auto --conformance-tier extended`,
              every process sampled (benchmarks/process_memory.py): exit, wall time, records, peak
              and held memory per kind of process (worker, each kind of framework child), how often
              a process was released or replaced for holding more than its budget (opt-in; about
              half an hour on 2 cores).
  million     the large tier's geometries with more replicates, about 10^6 checks, as 3 shards one
              after another; merged, its report rendered and opened in Chromium: wall time, every
              process's peak memory, time until the report is usable (opt-in; about an hour).

Results print as a table (value, goal, whether it is met) and are saved as JSON (--json; by default
benchmarks/results/<UTC time>.json and benchmarks/results/latest.json). Figures are ratios within one
run wherever a goal is a ratio: the machine is shared and absolute times are noisy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report_load import chromium, measure, synthetic_document  # noqa: E402
from conformance import timing  # noqa: E402

SECTIONS = (
    "reference",
    "corpus",
    "collection",
    "report",
    "ranks",
    "baseline",
    "checkouts",
    "large",
    "shards",
    "extended",
    "million",
)
# Records of `-m "large and cpu"` (6,240 cases x 52 CPU checks): the million section scales its replicates by this.
LARGE_TIER_RECORDS = 324_480
DEFAULT_SECTIONS = ("reference", "corpus", "collection", "report")
# (name, goal, comparison): the targets, checked against what was measured.
GOALS: dict[str, tuple[float, str]] = {
    "corpus.overhead_ratio_n1": (1.3, "<="),
    "corpus.checks_phase_speedup_excluding_load": (1.7, ">="),
    "reference.forward_ratio": (2.0, "<="),
    "report.100000.usable_s": (2.0, "<="),
    "report.20000.usable_s": (2.0, "<="),
    "collection.large_tier.peak_rss_gib": (1.5, "<"),
    "large.peak_rss_gib_per_worker": (1.5, "<"),
    "large.checks": (100_000, ">="),
    "large.overhead_ratio": (1.2, "<="),
    "large.peak_rss_gib_controller": (1.0, "<"),
    "shards.sequential_over_unsharded": (1.1, "<="),
    "checkouts.after_cold_over_before": (1 / 3, "<="),
    "checkouts.after_cold_over_baseline": (1 / 3, "<="),
    "checkouts.warm_speedup_over_cold": (2.0, ">="),
    "checkouts.same_checks_cold.differing_checks_or_outcomes": (0, "=="),
    "extended.exit": (0, "=="),
    "extended.held_most_gib_any_process": (1.5, "<="),
    "million.records": (1_000_000, ">="),
    "million.peak_rss_gib_any_process": (2.0, "<"),
    "million.merge_peak_rss_gib": (2.0, "<"),
    "million.report_usable_s": (3.0, "<="),
}
RSS_HELPER = (
    "import resource, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "with open(sys.argv[1], 'wb') as output:\n"
    "    code = subprocess.run(sys.argv[2:], stdout=output, stderr=subprocess.STDOUT).returncode\n"
    "print(code, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
)


def measured_process(command: list[str], cwd: Path = ROOT, environment: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall time, exit status, output and the largest peak RSS among the command and its descendants
    (through a helper process, so that earlier measurements do not count)."""
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        result = subprocess.run(
            [sys.executable, "-c", RSS_HELPER, log.name, *command],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, **(environment or {})},
        )
        output = Path(log.name).read_text(errors="replace")
    ended_at = time.time()  # (the helper exits right after the command: a run's end, as its records' clocks read it)
    code, wall, rss = result.stdout.split()
    figures = {"exit": int(code), "wall_s": float(wall), "peak_rss_bytes": int(rss), "output": output}
    return {**figures, "ended_at": ended_at}


def retirements(processes: dict[str, Any]) -> dict[str, Any]:
    """The workers a run replaced for holding more than their memory budget, by the check after which
    each retired (its replacement imports and compiles again: about 25 s on 2 cores, which two runs'
    wall times then differ by), and how often a process released its caches to stay under it."""
    return {
        "workers_retired": [p["retired"] for p in processes.values() if p.get("retired")],
        "cache_releases": sum(int(p.get("releases") or 0) for p in processes.values()),
    }


def collected(output: str) -> int:
    found = re.search(r"(\d+)(?:/\d+)? tests? collected", output)
    return int(found.group(1)) if found else 0


def best_of(function: Callable[[], Any], repeat: int) -> float:
    function()  # warm: first-call allocation and dispatch are not the steady cost
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def section_reference(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from conformance import reference
    from conformance.semantics import geometry

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 64, 32))
    w = rng.standard_normal((3, 3, 32, 32))
    geo = geometry("SAME", (64, 64), (3, 3), (2, 2), (1, 1))
    dy = rng.standard_normal((1, *geo.output_size, 32))
    x_t, w_t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
    dy_t = torch.from_numpy(dy.transpose(0, 3, 1, 2).copy())
    got = F.conv2d(x_t, w_t, padding="same", dilation=2).numpy().transpose(0, 2, 3, 1)
    assert np.allclose(got, reference.conv_resolved(x, w, geo, 1), atol=1e-9), "reference and torch disagree"
    figures: dict[str, Any] = {
        "shape": "input 1x64x64x32, kernel 3x3x32x32, rate 2, SAME, float64; default threads on both sides",
        "reference_s": best_of(lambda: reference.conv_resolved(x, w, geo, 1), args.repeat),
        "torch_s": best_of(lambda: F.conv2d(x_t, w_t, padding="same", dilation=2), args.repeat),
        "reference_grad_input_s": best_of(lambda: reference.conv_input_grad(dy, w, geo, 1), args.repeat),
        "torch_grad_input_s": best_of(
            lambda: torch.nn.grad.conv2d_input(x_t.shape, w_t, dy_t, padding=2, dilation=2), args.repeat
        ),
        "reference_grad_kernel_s": best_of(lambda: reference.conv_kernel_grad(x, dy, geo, 1), args.repeat),
        "torch_grad_kernel_s": best_of(
            lambda: torch.nn.grad.conv2d_weight(x_t, w_t.shape, dy_t, padding=2, dilation=2), args.repeat
        ),
    }
    figures["forward_ratio"] = figures["reference_s"] / figures["torch_s"]
    figures["grad_input_ratio"] = figures["reference_grad_input_s"] / figures["torch_grad_input_s"]
    figures["grad_kernel_ratio"] = figures["reference_grad_kernel_s"] / figures["torch_grad_kernel_s"]
    return figures


def pytest_run(
    arguments: list[str], scratch: Path, name: str, html: bool = True, environment: dict[str, str] | None = None
) -> dict[str, Any]:
    """One fresh pytest over the corpus; its wall time and what its results say about where time went.
    The results are read one record at a time (a million-check file is gigabytes of JSON)."""
    from conformance.record_files import open_results_json

    out = scratch / name
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *arguments]
    # (`--option=PATH`: a path after a space is one pytest reads as a test path, pytest-dev/pytest#8846)
    command += [f"--conformance-json={out / 'results.json'}"]
    command += [f"--conformance-html={out / 'index.html' if html else 'none'}"]
    process = measured_process(command, environment=environment)
    opened = open_results_json(out / "results.json")
    assert opened is not None, f"{out / 'results.json'}: not a results file\n{process['output'][-3000:]}"
    header, records = opened
    processes = header["environment"].get("processes", {})
    replaced = retirements(processes)
    print(
        f"  {name}: exit {process['exit']}, {process['wall_s']:.0f} s,"
        f" peak {process['peak_rss_bytes'] / 2**30:.2f} GiB in any process,"
        f" {len(replaced['workers_retired'])} worker(s) replaced",
        flush=True,
    )
    workers = {k: v for k, v in processes.items() if k not in ("controller", "main")} or processes
    bare = {kind: sum(p.get(kind, 0.0) for p in workers.values()) for kind in timing.KINDS}
    first_check = min(p.get("first_check_at", 0.0) for p in workers.values())
    last_check = max(p.get("last_check_at", 0.0) for p in workers.values())
    from conformance.plugin.items import failing

    outcomes: dict[str, int] = {}
    failed: list[dict[str, Any]] = []
    for record in records:
        outcomes[record["outcome"]] = outcomes.get(record["outcome"], 0) + 1
        if failing(record) and len(failed) < 20:  # what made the run red, for the figures' reader
            failed.append({k: record.get(k) for k in ("case", "target", "dtype", "outcome")})
            failed[-1]["message"] = (record.get("message") or "")[:1500]
    return {
        "command": " ".join(command[2:]),
        "exit": process["exit"],
        "wall_s": process["wall_s"],
        "workers": len(workers),
        "records": len(records),
        "checks_run": sum(n for outcome, n in outcomes.items() if outcome not in ("skip", "unsupported")),
        "outcomes": outcomes,
        "failed": failed,
        **{f"bare_{kind}": round(seconds, 2) for kind, seconds in bare.items()},
        "bare_s": round(sum(bare.values()), 2),
        "load_s_per_worker_max": max((p.get(timing.LOAD, 0.0) for p in workers.values()), default=0.0),
        # From the first check's start to the last one's end in any worker: no interpreter start, no
        # collection, no report writing.
        "checks_phase_s": last_check - first_check,
        # Before it (interpreters, imports, collection) and after it (the workers' ends, the results
        # and the report written): wall time with at most one process busy (the controller, at the end).
        "before_first_check_s": first_check - (process["ended_at"] - process["wall_s"]),
        "after_last_check_s": process["ended_at"] - last_check,
        **replaced,
        "peak_rss_bytes_per_worker": {k: p.get("peak_rss_bytes") for k, p in workers.items()},
        "peak_rss_bytes_controller": (processes.get("controller") or {}).get("peak_rss_bytes"),
        # The largest of every process the run started (controller, workers, their child processes).
        "peak_rss_bytes_all": process["peak_rss_bytes"],
        "results_path": str(out / "results.json"),
    }


def section_corpus(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    runs = {}
    for workers in ("1", args.workers):
        runs[workers] = pytest_run([*args.cases, "-n", workers, *args.pytest_args], scratch, f"corpus-n{workers}")
    one, many = runs["1"], runs[args.workers]
    figures: dict[str, Any] = {"n1": one, f"n{args.workers}": many}
    figures["overhead_ratio_n1"] = one["wall_s"] / one["bare_s"]
    figures[f"overhead_ratio_n{args.workers}"] = many["wall_s"] * many["workers"] / many["bare_s"]
    figures["speedup"] = one["wall_s"] / many["wall_s"]
    figures["speedup_excluding_load"] = (one["wall_s"] - one["load_s_per_worker_max"]) / (
        many["wall_s"] - many["load_s_per_worker_max"]
    )
    # Excluding imports: the checks phase (no process start, collection or report) less framework loading.
    figures["checks_phase_speedup_excluding_load"] = (one["checks_phase_s"] - one["load_s_per_worker_max"]) / (
        many["checks_phase_s"] - many["load_s_per_worker_max"]
    )
    return figures


# The case files of the ranks other than 2 (docs/ranks.md): `-k` leaves them out by their file's name.
OTHER_RANK_FILES = ("rank1", "rank3")


def section_ranks(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """What the 1-D and 3-D cases add to the default run: the same corpus run with them and without
    them, one after the other on this machine (the target: at most 1.2 times the 2-D run's wall time)."""
    common = [*args.cases, "-n", args.workers, *args.pytest_args]
    without = " and ".join(f"not {name}" for name in OTHER_RANK_FILES)
    every = pytest_run(common, scratch, "ranks-every", html=False)
    two_d = pytest_run([*common, "-k", without], scratch, "ranks-2d-only", html=False)
    return {
        "every_rank": every,
        "2d_only": two_d,
        "wall_ratio": every["wall_s"] / two_d["wall_s"],
        "checks_phase_ratio": every["checks_phase_s"] / two_d["checks_phase_s"],
        "checks_run_ratio": every["checks_run"] / two_d["checks_run"],
    }


SWEEP_100K = """
description = "Benchmark: a sweep that expands to {count} cases."
tier = "large"

[defaults]
dtypes = ["float32"]

[[sweep]]
id = "grid"
seed = 1
replicates = {replicates}
channels = 2
out_channels = 2
[sweep.axes]
size = [7, 8, 9, 10, 11, [12, 9], [9, 12], 13, 14, 15]
kernel_size = [1, 2, 3, [2, 3], 5]
rate = [1, 2, 3, [1, 2]]
stride = [1, 2, 3, [2, 1]]
padding = ["SAME", "VALID", 1, [[1, 0], [0, 2]], [[2, 2], [1, 1]]]
"""


def section_collection(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    corpus = scratch / "sweep"
    corpus.mkdir()
    replicates = -(-args.sweep_cases // (10 * 5 * 4 * 4 * 5))
    path = corpus / "sweep100k.toml"
    path.write_text(SWEEP_100K.format(count=args.sweep_cases, replicates=replicates))
    expand = (
        "import resource, sys, time; from pathlib import Path; from conformance.cases import load_file\n"
        "t = time.perf_counter(); loaded = load_file(Path(sys.argv[1])); t = time.perf_counter() - t\n"
        "assert not loaded.errors, loaded.errors[:1]\n"
        "print(len(loaded.cases), t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    )
    output = subprocess.run([sys.executable, "-c", expand, str(path)], cwd=ROOT, capture_output=True, text=True)
    cases, expand_s, expand_rss = output.stdout.split()
    figures: dict[str, Any] = {
        "sweep_cases": int(cases),
        "expand_s": float(expand_s),
        "expand_us_per_case": float(expand_s) / int(cases) * 1e6,
        "expand_peak_rss_gib": int(expand_rss) / 2**30,
    }
    # The project's settings and plugin, for a corpus outside the project (as a user's own --cases is).
    collect = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT)]
    collect += ["-p", "conformance.plugin", "-p", "no:cacheprovider", "-p", "no:xdist", "--collect-only", "-q"]
    one_target = ["-m", "large", "--conformance-target", "torch.conv2d-cpu"]
    sweep = measured_process([*collect, "--cases", str(corpus), *one_target])
    figures["sweep_items"] = collected(sweep["output"])
    figures["sweep_collect_s"] = sweep["wall_s"]
    figures["sweep_collect_us_per_item"] = sweep["wall_s"] / max(1, figures["sweep_items"]) * 1e6
    figures["sweep_collect_peak_rss_gib"] = sweep["peak_rss_bytes"] / 2**30
    # One item per check (--conformance-batch off): what collecting costs at its most.
    large = measured_process([*collect, "cases/", "-m", args.collection_mark, "--conformance-batch=off"])
    figures["large_tier"] = {
        "items": collected(large["output"]),
        "collect_s": large["wall_s"],
        "peak_rss_gib": large["peak_rss_bytes"] / 2**30,
    }
    return figures


def section_report(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from conformance.report import write_report

    figures: dict[str, Any] = {}
    driver = chromium(str(scratch / "chromium-profile")) if shutil.which("chromedriver") else None
    try:
        for size in args.report_sizes:
            document = synthetic_document(size)
            path = scratch / f"report-{size}.html"
            started = time.perf_counter()
            write_report(document, path)
            entry: dict[str, Any] = {"render_s": time.perf_counter() - started, "bytes": path.stat().st_size}
            entry["bytes_per_result"] = entry["bytes"] / size
            if driver is not None:
                browser = measure(driver, path, args.repeat)
                entry.update(
                    usable_s=browser["wall_s"],  # navigation until the matrix is drawn and answers
                    drawn_after_script_ms=browser["render_ms"],
                    filter_ms=browser["filter_ms"],
                    scroll_ms=browser["scroll_ms"],
                )
            figures[str(size)] = entry
    finally:
        if driver is not None:
            driver.quit()
    return figures


def _large_figures(run: dict[str, Any]) -> dict[str, Any]:
    rss = [v for v in run["peak_rss_bytes_per_worker"].values() if v]
    return {
        **run,
        "checks": run["records"],
        "overhead_ratio": run["wall_s"] * run["workers"] / run["bare_s"],
        # The same cost per record: unlike the ratio, it does not move when the frameworks' own calls
        # get faster or slower (from one machine, or one session, to the next).
        "harness_ms_per_record": (run["wall_s"] * run["workers"] - run["bare_s"]) / max(run["records"], 1) * 1e3,
        "peak_rss_gib_per_worker": max(rss) / 2**30 if rss else None,
        "peak_rss_gib_controller": (run["peak_rss_bytes_controller"] or 0) / 2**30,
        "peak_rss_gib_any_process": run["peak_rss_bytes_all"] / 2**30,
        "checks_per_s": run["records"] / run["wall_s"],
    }


def section_large(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    figures = _large_figures(pytest_run(["cases/", "-m", args.large_mark, "-n", args.workers], scratch, "large"))
    args.large_run = figures  # (the shards section compares against this run rather than repeating it)
    return figures


def _same_checks(first: Path, second: Path) -> dict[str, Any]:
    """Whether two results files hold the same checks with the same outcomes and output bits (where
    they are a function of the inputs: `records.output_identity`); both in record order, one pass each."""
    from itertools import zip_longest

    from conformance.record_files import open_results_json, record_key
    from conformance.records import output_identity

    files = [open_results_json(path) for path in (first, second)]
    assert all(files), "not results files"
    differing = differing_outcomes = compared = 0
    examples: list[str] = []
    for a, b in zip_longest(files[0][1], files[1][1]):  # type: ignore[index]
        compared += 1
        checks = [None if r is None else (record_key(r)[:3], r["outcome"]) for r in (a, b)]
        bits = [None if r is None else output_identity(r) for r in (a, b)]
        differing_outcomes += checks[0] != checks[1]
        differing += checks[0] != checks[1] or bits[0] != bits[1]
        if checks[0] != checks[1] and len(examples) < 10:
            examples.append(f"{checks[0]} / {checks[1]}")
    return {
        "compared": compared,
        "differing": differing,
        "differing_checks_or_outcomes": differing_outcomes,
        "examples": examples,
        "identical": differing == 0,
    }


def section_shards(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The large tier as 3 shards, one after another, merged: identical to the unsharded run, and
    what splitting costs (each shard starts, imports and collects on its own). The unsharded run
    is made again after the shards, and the shards are compared with the two runs' mean: a shared
    machine's speed drifts over the quarter of an hour this takes (by a sixth, one session), and a
    drift that goes one way over it cancels, where against the first run alone it was counted as
    the shards' cost."""
    whole = getattr(args, "large_run", None) or _large_figures(
        pytest_run(["cases/", "-m", args.large_mark, "-n", args.workers], scratch, "large")
    )
    shards = [
        _large_figures(
            pytest_run(
                ["cases/", "-m", args.large_mark, "-n", args.workers, f"--conformance-shard={k}/3"],
                scratch,
                f"shard{k}",
                html=False,
            )
        )
        for k in (1, 2, 3)
    ]
    again = pytest_run(["cases/", "-m", args.large_mark, "-n", args.workers], scratch, "large-again")
    merged = scratch / "shards-merged.json"
    merge = measured_process(
        [sys.executable, "-m", "conformance", "merge", *(s["results_path"] for s in shards), "-o", str(merged)]
    )
    assert merge["exit"] == 0, merge["output"][-3000:]
    unsharded = (whole["wall_s"] + again["wall_s"]) / 2
    return {
        "unsharded_wall_s": unsharded,
        "unsharded_walls_s": [whole["wall_s"], again["wall_s"]],  # (before and after the shards)
        "shard_wall_s": [s["wall_s"] for s in shards],
        "shard_records": [s["records"] for s in shards],
        "sequential_over_unsharded": sum(s["wall_s"] for s in shards) / unsharded,
        # (against the first unsharded run alone, as this section compared before it ran one again)
        "sequential_over_first_unsharded": sum(s["wall_s"] for s in shards) / whole["wall_s"],
        "merge_wall_s": merge["wall_s"],
        "merge_peak_rss_gib": merge["peak_rss_bytes"] / 2**30,
        "merged_vs_unsharded": _same_checks(Path(whole["results_path"]), merged),
    }


def _junit_seconds(path: Path) -> dict[str, float]:
    """Seconds of the harness's own tests (tests/) and of the checks (everything else), summed over
    items as pytest timed them (setup, call and teardown)."""
    import xml.etree.ElementTree as ElementTree

    seconds = {"harness_tests": 0.0, "checks": 0.0}
    for case in ElementTree.parse(path).iter("testcase"):
        kind = "harness_tests" if case.get("classname", "").startswith("tests.") else "checks"
        seconds[kind] += float(case.get("time") or 0.0)
    return seconds


def readme_run(
    checkout: Path,
    scratch: Path,
    name: str,
    user_cache: Path,
    python: str = sys.executable,
    paths: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The README's command, `pytest -n auto` (what it collects is the checkout's testpaths), or with
    `paths` (say the harness's tests and cases), in `checkout` with its own package first on the
    import path and `user_cache` as the user's cache directory (where the compilation cache lives
    by default, for the run and for the runs its tests start), and where the time went, in
    worker-seconds."""
    from conformance.record_files import open_results_json

    out = scratch / name
    out.mkdir(parents=True)
    command = [python, "-m", "pytest", *paths, "-n", "auto", "-p", "no:cacheprovider", "-q"]
    command += ["--junitxml", str(out / "junit.xml"), f"--conformance-json={out / 'results.json'}"]
    command += [f"--conformance-html={out / 'index.html'}"]
    environment = {"PYTHONPATH": str(checkout), "XDG_CACHE_HOME": str(user_cache)}
    process = measured_process(command, cwd=checkout, environment=environment)
    summary = re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?)", process["output"][-3000:])
    opened = open_results_json(out / "results.json")
    assert opened is not None, f"{name}: no results file\n{process['output'][-3000:]}"
    header, records = opened
    replaced = retirements(header["environment"].get("processes", {}))
    framework_s: dict[str, float] = {}
    kinds = dict.fromkeys(timing.KINDS, 0.0)
    check_seconds = 0.0
    for record in records:
        framework_s[record["framework"]] = framework_s.get(record["framework"], 0.0) + (record.get("framework_s") or 0)
        for kind in timing.KINDS:
            kinds[kind] += record.get(kind) or 0.0
        check_seconds += record.get("duration_s") or 0.0
    # What `-n auto` starts at once (xdist: the variable, else the CPUs this process may use); the
    # results' processes also list the workers that replaced a retired one.
    workers = int(os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or len(os.sched_getaffinity(0)))
    items = _junit_seconds(out / "junit.xml")
    worker_seconds = process["wall_s"] * workers
    where = {
        "harness_tests": items["harness_tests"],
        "framework_loading": kinds[timing.LOAD],
        "framework_calls": kinds[timing.FRAMEWORK],
        "reference": kinds[timing.REFERENCE],
        "harness_per_check": check_seconds - sum(kinds.values()),
        "check_items_beyond_their_checks": items["checks"] - check_seconds,
    }
    where["start_collection_idle_and_end"] = worker_seconds - sum(where.values())
    retired = len(replaced["workers_retired"])
    print(f"  {name}: exit {process['exit']}, {process['wall_s']:.0f} s, {retired} worker(s) replaced", flush=True)
    return {
        "command": " ".join(command[2:]),
        "checkout": str(checkout),
        "exit": process["exit"],
        "wall_s": process["wall_s"],
        "workers": workers,
        **replaced,
        "pytest_counts": {word: int(n) for n, word in summary},
        "worker_seconds": worker_seconds,
        "where_worker_seconds": {k: round(v, 1) for k, v in where.items()},
        "framework_calls_s": {k: round(v, 1) for k, v in sorted(framework_s.items())},
        "results_path": str(out / "results.json"),
    }


def section_baseline(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The README's command on one checkout (--baseline: an issue's start), once, cold. Saved on its
    own, it lets `--only checkouts --baseline-from FILE` later in the same session on the same
    machine give the ratio over it without running it again; in one invocation the checkouts
    section takes it from here."""
    python, cache = args.before_python or sys.executable, scratch / "user-cache-baseline"
    args.baseline_run = readme_run(args.baseline.resolve(), scratch, "baseline", cache, python)
    return dict(args.baseline_run)


def saved_baseline(path: Path, machine: dict[str, Any]) -> dict[str, Any]:
    """The baseline run in a results JSON written by `--only baseline` (or by a checkouts section that
    ran one), marked with where and when it was measured; ValueError where it holds none."""
    saved = json.loads(path.read_text())
    sections = saved.get("sections", {})
    run = sections.get("baseline") or sections.get("checkouts", {}).get("baseline")
    if not isinstance(run, dict) or "wall_s" not in run:
        raise ValueError(f"{path}: no baseline run (sections.baseline) in it")
    if saved.get("machine") != machine:
        print(f"warning: {path} was measured on {saved.get('machine')}, this is {machine}", file=sys.stderr)
    return {**run, "saved_in": str(path), "saved_at": saved.get("created")}


def section_checkouts(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The README's command on two checkouts of this repository (--before, --after), alternating on
    one machine: before, after, after again, before again; then the project's whole test command
    (the harness's tests and cases) on the after side, warm. Each side gets one empty user cache
    directory (XDG_CACHE_HOME): its first run starts cold and its second re-runs on what the first
    compiled (a checkout without a persistent compilation cache keeps nothing there: both of its
    runs are cold, and their spread is the machine's drift). With --baseline, the baseline section
    has run a third checkout (an issue's starting point) once first, cold, for the ratio over the
    whole issue; --baseline-from reads that run from an earlier invocation instead."""
    before, after = args.before.resolve(), args.after.resolve()
    caches = {side: scratch / f"user-cache-{side}" for side in ("before", "after")}
    pythons = {"before": args.before_python or sys.executable, "after": args.after_python or sys.executable}
    runs: dict[str, dict[str, Any]] = {} if args.baseline_run is None else {"baseline": args.baseline_run}
    runs |= {
        "before_1": readme_run(before, scratch, "before-1", caches["before"], pythons["before"]),
        "after_cold": readme_run(after, scratch, "after-cold", caches["after"], pythons["after"]),
        "after_warm": readme_run(after, scratch, "after-warm", caches["after"], pythons["after"]),
        "before_2": readme_run(before, scratch, "before-2", caches["before"], pythons["before"]),
    }
    # What the README's command compiled (the whole command's own runs add to it).
    cache_bytes = {side: sum(p.stat().st_size for p in caches[side].rglob("*") if p.is_file()) for side in caches}
    # What CI runs: the harness's own tests as well, on what the after runs compiled.
    runs["after_whole_warm"] = readme_run(
        after, scratch, "after-whole-warm", caches["after"], pythons["after"], paths=("tests", "cases")
    )

    def results(name: str) -> Path:
        return Path(runs[name]["results_path"])

    return {
        **runs,
        "pythons": {side: _installed(python) for side, python in pythons.items()},
        "cache_bytes": cache_bytes["after"],
        "before_cache_bytes": cache_bytes["before"],
        **checkout_ratios(runs, before_kept_a_cache=cache_bytes["before"] > 0),
        "same_checks_cold": _same_checks(results("before_1"), results("after_cold")),
        "same_checks_warm": _same_checks(results("after_cold"), results("after_warm")),
    }


def checkout_ratios(runs: dict[str, dict[str, Any]], before_kept_a_cache: bool) -> dict[str, float]:
    """The checkouts section's ratios of wall times. Where the before side keeps a compilation
    cache too, its second run is warm: cold is compared with cold and warm with warm. Otherwise
    both before runs are cold, their mean is the baseline and their spread the machine's drift."""
    wall = {name: run["wall_s"] for name, run in runs.items()}
    ratios = {"warm_speedup_over_cold": wall["after_cold"] / wall["after_warm"]}
    # What a warm after run is compared with: the before side's warm run, or its cold runs' mean.
    before_warm = wall["before_2"] if before_kept_a_cache else statistics.mean([wall["before_1"], wall["before_2"]])
    if before_kept_a_cache:
        ratios |= {
            "after_cold_over_before": wall["after_cold"] / wall["before_1"],
            "after_warm_over_before_warm": wall["after_warm"] / wall["before_2"],
            "before_warm_speedup_over_cold": wall["before_1"] / wall["before_2"],
        }
    else:
        ratios |= {
            "after_cold_over_before": wall["after_cold"] / before_warm,
            "after_warm_over_before": wall["after_warm"] / before_warm,
            "before_runs_spread": abs(wall["before_1"] - wall["before_2"]) / before_warm,
        }
    if "after_whole_warm" in wall:  # the harness's tests too
        ratios["after_whole_warm_over_before_warm"] = wall["after_whole_warm"] / before_warm
    if "baseline" in wall:
        ratios |= {
            "after_cold_over_baseline": wall["after_cold"] / wall["baseline"],
            "after_warm_over_baseline": wall["after_warm"] / wall["baseline"],
        }
    return ratios


def _installed(python: str) -> dict[str, str]:
    """One side's interpreter and the numpy and ml_dtypes it imports, where two sides' installs differ
    (a changed constraints.txt); each run's results name the frameworks' versions."""
    probe = (
        "import json, numpy, ml_dtypes\n"
        "print(json.dumps({'numpy': numpy.__version__, 'ml_dtypes': ml_dtypes.__version__}))"
    )
    printed = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip()
    return {"python": python, **(json.loads(printed) if printed else {})}


MOST = ("held_most_bytes", "left_most_bytes", "peak_rss_bytes")


def section_extended(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The extended tier as a new user runs it (`pytest cases -n auto --conformance-tier extended`),
    with every process of the run sampled: does it finish, how much did each kind of process hold, how
    often was a process replaced for holding more than its budget (conformance/held_memory.py)."""
    from benchmarks.process_memory import TAG_VARIABLE, Sampler

    sampler = Sampler(tag=f"extended-{os.getpid()}-{time.time_ns()}")
    sampler.start()
    try:
        arguments = [*args.extended_cases, "-n", args.workers, "--conformance-tier", "extended", *args.pytest_args]
        run = pytest_run(arguments, scratch, "extended", environment={TAG_VARIABLE: sampler.tag})
    finally:
        sampler.stop()
    from conformance.record_files import open_results_json

    opened = open_results_json(Path(run["results_path"]))
    assert opened is not None
    processes = opened[0]["environment"].get("processes", {})
    workers = {k: v for k, v in processes.items() if k not in ("controller", "main")}
    children: dict[str, dict[str, int]] = {}
    for usage in workers.values():
        for kind, tally in usage.get("children", {}).items():
            mine = children.setdefault(kind, dict.fromkeys(("started", "recycled", *MOST), 0))
            for name in ("started", "recycled"):
                mine[name] += tally[name]
            for name in MOST:
                mine[name] = max(mine[name], tally[name])
    held = [usage.get("held_most_bytes", 0) for usage in workers.values()]
    left = [usage.get("left_most_bytes", 0) for usage in workers.values()]
    return {
        **run,
        "sampled": sampler.figures(),
        "workers_started": len(workers),
        "workers_recycled": sum(1 for usage in workers.values() if usage.get("retired")),
        "worker_releases": sum(usage.get("releases", 0) for usage in workers.values()),
        # Carried into a check (at most the budget), and left by one before its release or replacement.
        "worker_held_most_gib": round(max(held, default=0) / 2**30, 3),
        "worker_left_most_gib": round(max(left, default=0) / 2**30, 3),
        "worker_peak_rss_gib": round(max((u.get("peak_rss_bytes") or 0) for u in workers.values()) / 2**30, 3),
        "children": {
            kind: {
                "started": tally["started"],
                "recycled": tally["recycled"],
                "held_most_gib": round(tally["held_most_bytes"] / 2**30, 3),
                "left_most_gib": round(tally["left_most_bytes"] / 2**30, 3),
                "peak_rss_gib": round(tally["peak_rss_bytes"] / 2**30, 3),
            }
            for kind, tally in sorted(children.items())
        },
        "held_most_gib_any_process": round(
            max([*held, *(t["held_most_bytes"] for t in children.values())], default=0) / 2**30, 3
        ),
    }


def section_million(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """The large tier's geometries with enough replicates for about 10^6 checks, run as 3 shards one
    after another, merged, and the merged report opened in headless Chromium."""
    text = (ROOT / "cases" / "large.toml").read_text()
    scale = args.million_checks / LARGE_TIER_RECORDS
    text = re.sub(r"^replicates = (\d+)$", lambda m: f"replicates = {round(int(m.group(1)) * scale)}", text, flags=re.M)
    corpus = scratch / "million"
    corpus.mkdir()
    (corpus / "million.toml").write_text(text)
    shards = [
        _large_figures(
            pytest_run(
                [f"--cases={corpus}", "-m", args.large_mark, "-n", args.workers, f"--conformance-shard={k}/3"],
                scratch,
                f"million{k}",
                html=False,
            )
        )
        for k in (1, 2, 3)
    ]
    merged, html = scratch / "million-merged.json", scratch / "million.html"
    merge = measured_process(
        [
            sys.executable,
            "-m",
            "conformance",
            "merge",
            *(s["results_path"] for s in shards),
            "-o",
            str(merged),
            "--html",
            str(html),
        ]
    )
    assert merge["exit"] == 0, merge["output"][-3000:]
    figures: dict[str, Any] = {
        "records": sum(s["records"] for s in shards),
        "checks_run": sum(s["checks_run"] for s in shards),
        "shard_wall_s": [s["wall_s"] for s in shards],
        "wall_s": sum(s["wall_s"] for s in shards),
        "overhead_ratio": sum(s["wall_s"] * s["workers"] for s in shards) / sum(s["bare_s"] for s in shards),
        "peak_rss_gib_controller": max(s["peak_rss_gib_controller"] for s in shards),
        "peak_rss_gib_per_worker": max(s["peak_rss_gib_per_worker"] or 0 for s in shards),
        "peak_rss_gib_any_process": max(s["peak_rss_gib_any_process"] for s in shards),
        "merge_and_report_wall_s": merge["wall_s"],
        "merge_peak_rss_gib": merge["peak_rss_bytes"] / 2**30,
        "results_bytes": merged.stat().st_size,
        "report_bytes": html.stat().st_size,
    }
    if shutil.which("chromedriver"):
        driver = chromium(str(scratch / "chromium-million"))
        try:
            browser = measure(driver, html, 1)
        finally:
            driver.quit()
        figures.update(report_usable_s=browser["wall_s"], report_filter_ms=browser["filter_ms"])
    return figures


def flatten(figures: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("outcomes", "peak_rss_bytes_per_worker"):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def table(results: dict[str, Any], earlier: dict[str, Any] | None) -> str:
    flat = flatten(results["sections"])
    previous = flatten(earlier["sections"]) if earlier else {}
    lines = [f"{'measure':58} {'value':>14} {'goal':>10} {'met':>4}" + (f" {'before':>14}" if earlier else "")]
    for name, value in flat.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        goal = GOALS.get(name)
        met = ""
        if goal is not None and isinstance(value, (int, float)):
            bound, comparison = goal
            ok = {"<=": value <= bound, "<": value < bound, ">=": value >= bound, "==": value == bound}[comparison]
            met = "yes" if ok else "NO"
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        line = f"{name:58} {shown[:40]:>14} {(goal[1] + format(goal[0], 'g')) if goal else '':>10} {met:>4}"
        if earlier:
            before = previous.get(name)
            line += f" {(format(before, '.4g') if isinstance(before, float) else str(before or ''))[:14]:>14}"
        lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(DEFAULT_SECTIONS))
    parser.add_argument("--cases", nargs="+", default=["cases/"], help="the corpus for the corpus section")
    parser.add_argument("--extended-cases", nargs="+", default=["cases/"], help="the corpus for the extended section")
    parser.add_argument("--workers", default="auto", help="the parallel run's -n (default auto)")
    parser.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[], help="passed to the corpus runs")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sweep-cases", type=int, default=100_000)
    parser.add_argument("--million-checks", type=int, default=1_000_000, help="the million section's size")
    parser.add_argument(
        "--large-mark",
        default="large and cpu",
        help="-m of the large, shards and million sections (default: large and cpu)",
    )
    parser.add_argument(
        "--collection-mark",
        default="large",
        help="-m of the collection section's large-tier collection (default: large, every target's)",
    )
    parser.add_argument("--report-sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--before", type=Path, default=None, help="checkouts: the baseline (e.g. a worktree of main)")
    parser.add_argument("--after", type=Path, default=ROOT, help="checkouts: the change (default: this checkout)")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="checkouts: a third checkout run once, cold (an issue's start)"
    )
    parser.add_argument(
        "--baseline-from",
        type=Path,
        default=None,
        help="checkouts: the baseline run of an earlier `--only baseline` (same session and machine) instead",
    )
    parser.add_argument(
        "--before-python", default=None, help="checkouts: the baseline's interpreter, where its install differs"
    )
    parser.add_argument("--after-python", default=None, help="checkouts: the change's interpreter (default: this one)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--compare", type=Path, default=None, help="an earlier results JSON to show beside this one")
    args = parser.parse_args()
    if "checkouts" in args.only and args.before is None:
        parser.error("the checkouts section needs --before CHECKOUT (e.g. `git worktree add --detach /tmp/main main`)")
    if "baseline" in args.only and args.baseline is None:
        parser.error("the baseline section needs --baseline CHECKOUT")
    if "checkouts" in args.only and args.baseline is not None and "baseline" not in args.only:
        args.only.append("baseline")  # (run before checkouts: SECTIONS' order)
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    args.baseline_run = None
    if args.baseline_from is not None:
        if args.baseline is not None or "checkouts" not in args.only:
            parser.error("--baseline-from is for the checkouts section, instead of --baseline")
        try:
            args.baseline_run = saved_baseline(args.baseline_from, machine)
        except (OSError, ValueError) as exc:
            parser.error(str(exc))
    started = datetime.datetime.now(datetime.UTC)
    results: dict[str, Any] = {
        "created": started.isoformat(timespec="seconds"),
        "machine": machine,
        "command": sys.argv,
        "sections": {},
    }
    out = args.json or ROOT / "benchmarks" / "results" / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = ""
    with tempfile.TemporaryDirectory(prefix="conformance-bench-") as directory:
        scratch = Path(directory)
        for section in SECTIONS:
            if section not in args.only:
                continue
            print(f"[{section}] ...", flush=True)
            function = globals()[f"section_{section}"]
            results["sections"][section] = function(args) if section == "reference" else function(args, scratch)
            # Written after every section, so a run stopped in a later one keeps what it measured.
            text = json.dumps(results, indent=1) + "\n"
            partial = out.with_name(f".{out.name}.partial")
            partial.write_text(text)
            partial.replace(out)
    if args.json is None:
        (out.parent / "latest.json").write_text(text)
    earlier = json.loads(args.compare.read_text()) if args.compare else None
    print(table(results, earlier))
    print(f"saved: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
