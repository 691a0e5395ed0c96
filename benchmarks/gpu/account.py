"""The GPU kit's short account (benchmarks/gpu/run.sh): what ran where, what it found, and whether
the run finished inside its budget, as Markdown on stdout.

    python benchmarks/gpu/account.py RESULTS --pytest-status N --budget S --seconds S
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from conformance.overview import Overview, bucket_of
from conformance.results import read_results

TIMED_OUT = 124  # timeout(1)'s status when the budget stopped the checks


def account(document: dict[str, Any], status: int, budget_s: float, seconds: float) -> str:
    environment = document.get("environment") or {}
    records = [r for r in document["results"] if r.get("device") == "gpu"]
    glance = Overview().add_all(records)
    devices = sorted({d for info in environment.get("frameworks", {}).values() for d in info.get("devices", [])})
    stand_in = environment.get("gpu_stand_in")
    lines = ["# GPU kit: account", ""]
    if stand_in:
        lines.append(f"**Dry run**: the GPU targets ran on the {stand_in} (CONFORMANCE_GPU_STAND_IN), not on a GPU.")
    lines += [
        f"- machine: {environment.get('cpu', '?')}; devices the frameworks saw: {', '.join(devices) or 'none'}",
        "- versions: "
        + ", ".join(f"{name} {version}" for name, version in sorted(environment.get("framework_versions", {}).items())),
        f"- checks: {len(records)} GPU records in {seconds:.0f} s (budget {budget_s:.0f} s); pytest exit {status}"
        + (": **the budget stopped the run**; what finished is reported" if status == TIMED_OUT else ""),
        "",
        "| framework | records | " + " | ".join(("conformant", "xfail", "failing", "unsupported", "skip")) + " |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    by_framework: dict[str, Counter[str]] = {}
    for record in records:
        by_framework.setdefault(record["framework"], Counter())[bucket_of(record)] += 1
    for framework, counts in sorted(by_framework.items()):
        cells = " | ".join(str(counts[b]) for b in ("conformant", "xfail", "failing", "unsupported", "skip"))
        lines.append(f"| {framework} | {sum(counts.values())} | {cells} |")
    skipped = Counter((r.get("message") or "").split("\n", 1)[0] for r in records if r["outcome"] == "skip")
    if skipped:
        lines += ["", "Not run, by reason:"]
        lines += [f"- {count} x {reason}" for reason, count in skipped.most_common(8)]
    groups = glance.failure_groups()
    lines += ["", f"Failing: {glance.failure_count} check(s) in {len(groups)} group(s) by cause."]
    for group in groups[:15]:
        near = f" (nearly known: {group.near_miss})" if group.near_miss else ""
        lines.append(
            f"- {group.count} x {group.framework} {group.kind}, {group.outcome} ({', '.join(sorted(group.dtypes))}): "
            f"{group.cause}; e.g. {group.example}{near}"
        )
    edits = [e for e in document.get("expectations", []) if e.get("status") in ("fixed", "partly fixed", "changed")]
    if edits:
        lines += ["", "Known divergences that need an edit:"]
        lines += [f"- {e['id']}: {e['status']}" + (f" ({e['narrow']})" if e.get("narrow") else "") for e in edits]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--pytest-status", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args(argv)
    document = read_results(args.results)
    document["results"] = list(document["results"])
    sys.stdout.write(account(document, args.pytest_status, args.budget, args.seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
