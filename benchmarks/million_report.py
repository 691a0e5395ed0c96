"""How long a 10^6-check report takes to open in headless Chromium, without running 10^6 checks:
a real run's records (SEED, e.g. the large tier with 2 replicates) are copied to about 10^6 with new
replicate numbers, jittered ratios and times, and fresh tensor digits in the reproductions they keep
(each replicate draws new data, which compresses no better than the million run's). The report is
drawn by this checkout and, with `--before DIR`, by another one, and both are timed in one browser.

    python -m pytest cases/ -m "large and cpu" -n auto --conformance-json seed.json   # (replicates = 2)
    python benchmarks/million_report.py seed.json --before /tmp/old-checkout

Prints each report's size and its median load (navigation until the matrix is drawn) of `--repeat`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report_load import chromium, measure  # noqa: E402
from conformance.results import atomic_write, write_json  # noqa: E402

NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")
RENDER = (
    "import sys; from pathlib import Path\n"
    "from conformance.record_files import open_results_json\n"
    "from conformance.report import write_report\n"
    "header, records = open_results_json(Path(sys.argv[1]))\n"
    "write_report({**header, 'results': records}, Path(sys.argv[2]))\n"
)


def copies(seed: list[dict[str, Any]], total: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """`total` records: copy k of the seed renumbers its replicates (the `-dN` suffix of a case id)."""
    replicates = 1 + max(int(m.group(1)) for r in seed if (m := re.search(r"-d(\d+)$", r["case"])))
    made = 0
    for k in range(total // len(seed) + 1):
        for record in seed:
            if made == total:
                return
            copy = dict(record)
            stem, replicate = re.fullmatch(r"(.*-d)(\d+)", record["case"]).groups()  # type: ignore[union-attr]
            copy["case"] = f"{stem}{replicates * k + int(replicate):05d}"
            for name in ("error_ratio", "duration_s"):
                if isinstance(copy.get(name), float):
                    copy[name] *= rng.uniform(0.5, 1.5)
            if copy.get("reproduction") and k:
                copy["reproduction"] = NUMBER.sub(lambda _: repr(rng.gauss(0, 1)), copy["reproduction"])
            made += 1
            yield copy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("seed", type=Path, help="a real run's results JSON")
    parser.add_argument("--records", type=int, default=1_000_896, help="(the million section's count)")
    parser.add_argument("--before", type=Path, help="another checkout to draw the same report with")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    seed = json.loads(args.seed.read_text())
    with tempfile.TemporaryDirectory(prefix="million-report-") as directory:
        scratch = Path(directory)
        results = scratch / "results.json"
        header = {k: v for k, v in seed.items() if k != "results"} | {"summary": {"total": args.records}}
        records = copies(seed["results"], args.records, random.Random(0))
        atomic_write(results, lambda handle: write_json({**header, "results": records}, handle))
        checkouts = {"this checkout": ROOT} | ({"before": args.before.resolve()} if args.before else {})
        reports = {}
        for name, checkout in checkouts.items():
            reports[name] = scratch / f"{len(reports)}.html"
            environment = {**os.environ, "PYTHONPATH": str(checkout)}
            # (run in the checkout: `-c` puts the working directory first on sys.path)
            subprocess.run(
                [sys.executable, "-c", RENDER, results, reports[name]], env=environment, cwd=checkout, check=True
            )
        driver = chromium(str(scratch / "profile"))
        try:
            for name, path in reports.items():
                timing = measure(driver, path, args.repeat)
                print(f"{name}: {path.stat().st_size / 1e6:.1f} MB, usable after {timing['wall_s']:.2f} s "
                      f"(drawn {timing['render_ms']:.0f} ms after its script started)", flush=True)  # fmt: skip
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
