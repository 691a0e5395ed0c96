"""How big the HTML report gets and how long Chromium takes to draw it, for the real suite and for a
synthetic results file of N results (default 20,000).

    python benchmarks/report_load.py [--results reports/results.json] [--synthetic 20000] [--repeat 3]

Prints, per report: file size, size per result, and the page's own time from script start to a
drawn matrix (`data-render-ms`, read from the page) plus the wall time of the whole load including
Chromium's parse. Figures are ratios to the real suite's report measured in the same run, because
the machine is shared and absolute times are noisy.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conformance.report import write_report

OUTCOME_MIX = (["pass"] * 80) + ["unsupported"] * 8 + ["skip"] * 6 + ["mismatch"] * 3 + ["error", "shape", "xfail"]
TARGETS = (
    ("torch", "conv2d", "cpu"),
    ("tensorflow", "conv2d", "cpu"),
    ("tensorflow", "atrous_conv2d", "cpu"),
    ("jax", "conv_general_dilated", "cpu"),
)


def synthetic_document(results: int, seed: int = 0) -> dict[str, Any]:
    """A results document with `results` records shaped like real ones (reproductions with inline data included)."""
    rng = random.Random(seed)
    records = []
    dtypes = ("float32", "float64")
    per_case = len(TARGETS) * len(dtypes)
    for number in range(-(-results // per_case)):
        family = f"sweep{number % 17}"
        case = f"{family}/case-{number:05d}"
        shape = [1, rng.randint(5, 24), rng.randint(5, 24), rng.randint(1, 4)]
        kernel = [3, 3, shape[3], rng.randint(1, 4)]
        data = ", ".join(f"{rng.uniform(-1, 1):.17g}" for _ in range(48))
        for framework, op, device in TARGETS:
            for dtype in dtypes:
                if len(records) == results:
                    break
                outcome = rng.choice(OUTCOME_MIX)
                ratio = rng.random() * (50 if outcome == "mismatch" else 0.3)
                records.append(
                    {
                        "case": case,
                        "case_file": f"cases/{family}.toml",
                        "target": f"{framework}.{op}-{device}",
                        "framework": framework,
                        "framework_version": "1.0",
                        "op": op,
                        "device": device,
                        "precision": "strict",
                        "dtype": dtype,
                        "outcome": outcome,
                        "input_shape": shape,
                        "kernel_shape": kernel,
                        "output_shape": [1, shape[1], shape[2], kernel[3]],
                        "rate": [2, 2],
                        "stride": [1, 1],
                        "padding": "SAME",
                        "pads": [[2, 2], [2, 2]],
                        "groups": 1,
                        "expect": "reference",
                        "exact": False,
                        "error_ratio": ratio if outcome in ("pass", "mismatch") else None,
                        "max_abs_error": ratio * 1e-6,
                        "message": f"{outcome} in {case}" if outcome != "pass" else "",
                        "reproduction": f"import numpy as np\nx = np.array([{data}])\n# case {case}, dtype {dtype}\n"
                        f"y = {framework}.{op}(x, w, rate=2)\n",
                        "description": f"Synthetic case {number} of family {family}.",
                        "tags": [family, "synthetic"],
                    }
                )
    return {
        "schema_version": 1,
        "created": "synthetic",
        "command": ["benchmarks/report_load.py"],
        "environment": {"cpu": "synthetic", "packages": {}},
        "summary": {"total": len(records), "by_outcome": {}, "by_target": {}},
        "case_errors": [],
        "expectations": [],
        "results": records,
    }


def chromium(user_data_dir: str) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)


def wait_ready(driver: Any, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = driver.execute_script("return document.body && document.body.dataset.ready")
        if state:
            return str(state)
        time.sleep(0.02)
    raise TimeoutError("the report never finished drawing")


def measure(driver: Any, path: Path, repeat: int) -> dict[str, float]:
    walls, renders = [], []
    for _ in range(repeat):
        driver.get("about:blank")
        started = time.perf_counter()
        driver.get(path.resolve().as_uri())
        assert wait_ready(driver) == "true"
        walls.append(time.perf_counter() - started)
        renders.append(float(driver.execute_script("return document.body.dataset.renderMs")))
    # One filter change and one scroll repaint, timed inside the page (what a user waits for per keystroke).
    filter_ms = driver.execute_script(
        "const t = performance.now(); state.text = 'case-0001'; refresh(); const d = performance.now() - t;"
        "state.text = ''; refresh(); return d;"
    )
    scroll_ms = driver.execute_script(
        "const m = document.getElementById('matrix'); m.scrollTop = m.scrollHeight / 2;"
        "const t = performance.now(); paint(); return performance.now() - t;"
    )
    return {
        "wall_s": statistics.median(walls),
        "render_ms": statistics.median(renders),
        "filter_ms": float(filter_ms),
        "scroll_ms": float(scroll_ms),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("reports/results.json"))
    parser.add_argument("--synthetic", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        reports = {}
        if args.results.exists():
            document = json.loads(args.results.read_text())
            reports[f"suite ({len(document['results'])} results)"] = (document, Path(scratch, "suite.html"))
        synthetic = synthetic_document(args.synthetic)
        reports[f"synthetic ({args.synthetic} results)"] = (synthetic, Path(scratch, "synthetic.html"))
        driver = chromium(str(Path(scratch, "profile")))
        try:
            baseline = None
            for name, (document, path) in reports.items():
                started = time.perf_counter()
                write_report(document, path)
                rendered_s = time.perf_counter() - started
                size = path.stat().st_size
                timing = measure(driver, path, args.repeat)
                baseline = baseline or timing
                print(
                    f"{name}: {size / 1e6:.2f} MB ({size / len(document['results']):.0f} B/result), "
                    f"written in {rendered_s:.2f} s; in Chromium: drawn {timing['render_ms']:.0f} ms after script "
                    f"start, load {timing['wall_s']:.2f} s wall; a filter change {timing['filter_ms']:.0f} ms, "
                    f"a scroll repaint {timing['scroll_ms']:.1f} ms "
                    f"(x{timing['wall_s'] / baseline['wall_s']:.1f} the first report's)"
                )
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
