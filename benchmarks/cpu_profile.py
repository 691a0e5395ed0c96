"""Where a run's CPU goes, by kind of process and by the harness's own functions: what the results'
timings cannot say (they time checks and framework calls, not pytest's item protocol, xdist's
reports, a framework child's imports or the harness's work between the two).

    python benchmarks/cpu_profile.py --raw prof.txt -- pytest cases -n 2 -p no:cacheprovider -q
    python benchmarks/cpu_profile.py --raw prof.txt            # summarize an earlier profile

The command runs under `py-spy record --subprocesses -f raw` (pip install py-spy; it needs ptrace,
which a container may deny): every process of the run is sampled, the controller, each xdist worker
and each framework child (conformance/adapters/child.py). A sample is a stack of a thread the OS
reports running; py-spy's idle detection is heuristic, so a blocking pipe read may count as running
(the controller's reads of its workers' reports do). Sampling pauses each process, which slows the
run (at 40 Hz on 2 cores: 1.4x for the default run, 2.6x for the large tier with its framework
children): read shares of the samples, not seconds.

A worker's samples are put in one category each:
- `imports` (outside a check: the frameworks and the harness loading), `collection`;
- `framework call`: inside the runner's call of an adapter (`*.run`, a baseline's output, a
  framework's availability check), a child's round trip included;
- `harness: <function>`: the rest of a check, by the function the runner (`run_check`), the item's
  guard or the item itself called, e.g. `classify` (judging), `BoundedCache.__call__` (data and
  reference), `make_record`, `settle` (known divergences), `wire_record`; those under 0.5% of the
  process kind's samples together as `harness: (each under 0.5%)`;
- `pytest items`, with `xdist reports` apart: the item protocol around the checks;
- `outside items` (the worker's loop between items, its start and end).
A child's samples are `imports`, `framework call` (its `_answer`) or `messages` (its loop).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

# One stack per record: `process PID:"command";...;frame;frame COUNT`. A command line may hold
# newlines (xdist starts its workers with `python -c "import sys\nexec(...)"`), so records are
# split on the count that ends them, not on lines.
_RECORD = re.compile(r"(.*?) (\d+)\n", re.S)
_PROCESS = re.compile(r'process (\d+):"(.*?)"(?:;|$)', re.S)
FRAMEWORK_CALLS = ("_baseline_output", "check_available")  # (besides an adapter's `run`)
CHECK_ENTRY = ("run_check", "guarded")  # the runner, and the item's guard around it
SMALL_SHARE = 0.005
SMALL_HARNESS = "harness: (each under 0.5%)"


def stacks(raw: str) -> Iterator[tuple[list[tuple[str, str]], list[str], int]]:
    """(processes outermost first as (pid, command), frames outermost first, samples) per record."""
    for match in _RECORD.finditer(raw):
        body, count = match.group(1), int(match.group(2))
        processes = _PROCESS.findall(body)
        frames = [frame for frame in _PROCESS.sub("", body).split(";") if frame]
        yield processes, frames, count


def process_kind(processes: list[tuple[str, str]]) -> str:
    if not processes:
        return "unknown"
    command = processes[-1][1]
    if "conformance.adapters.child" in command:
        return "child"
    return "controller" if len(processes) == 1 else "worker"


def _function(frame: str) -> str:
    """`Class.method (path:line)` -> `Class.method`."""
    return frame.split(" (", 1)[0]


def _is_framework_call(function: str) -> bool:
    return function.endswith(".run") or function.rsplit(".", 1)[-1] in FRAMEWORK_CALLS


def worker_category(frames: list[str]) -> str:
    functions = [_function(frame) for frame in frames]
    entries = [i for i, name in enumerate(functions) if name in CHECK_ENTRY]
    if entries:
        # The innermost of run_check and guarded, and what it called.
        inner = entries[-1]
        called = functions[inner + 1] if inner + 1 < len(functions) else functions[inner]
        if any(_is_framework_call(name) for name in functions[inner + 1 :]):
            return "framework call"
        return f"harness: {called}"
    if "pytest_runtest_protocol" in functions:
        if "WorkerInteractor.sendevent" in functions:
            return "xdist reports"
        runtest = [i for i, name in enumerate(functions) if name.endswith(".runtest")]
        if runtest and runtest[-1] + 1 < len(functions):  # an item's own work around its checks
            return f"harness: {functions[runtest[-1] + 1]}"
        return "pytest items"
    if "_find_and_load" in functions:
        return "imports"
    if any(name.startswith("pytest_collection") for name in functions):
        return "collection"
    return "outside items"


def child_category(frames: list[str]) -> str:
    functions = [_function(frame) for frame in frames]
    if "_find_and_load" in functions:
        return "imports"
    return "framework call" if "_answer" in functions else "messages"


def summarize(raw: str, rate: float) -> dict[str, dict[str, float]]:
    """Seconds of samples per process kind and category (`total` per kind), largest first."""
    counts: dict[str, Counter[str]] = {}
    for processes, frames, count in stacks(raw):
        kind = process_kind(processes)
        category = {"worker": worker_category, "child": child_category}.get(kind, lambda _: "all")(frames)
        counts.setdefault(kind, Counter())[category] += count
    summary: dict[str, dict[str, float]] = {}
    for kind, categories in sorted(counts.items()):
        floor = SMALL_SHARE * sum(categories.values())
        for name, n in list(categories.items()):
            if name.startswith("harness: ") and n < floor:
                categories[SMALL_HARNESS] += categories.pop(name)
        summary[kind] = {"total": round(sum(categories.values()) / rate, 1)}
        summary[kind].update({name: round(n / rate, 1) for name, n in categories.most_common()})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, required=True, help="py-spy's raw profile: written, or read if no command")
    parser.add_argument("--rate", type=int, default=40, help="samples per second (default 40)")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument("command", nargs="*", help="the run to profile (after --)")
    args = parser.parse_args(argv)
    if args.command:
        spy = shutil.which("py-spy")
        if spy is None:
            parser.error("py-spy is not installed (pip install py-spy)")
        record = [spy, "record", "--subprocesses", "-r", str(args.rate), "-f", "raw", "-o", str(args.raw), "--"]
        subprocess.run([*record, *args.command], check=False)
    summary = summarize(args.raw.read_text(encoding="utf-8", errors="replace"), args.rate)
    for kind, categories in summary.items():
        print(f"{kind}: {categories['total']:.1f} s")
        for name, seconds in categories.items():
            if name != "total":
                print(f"  {seconds:8.1f} s  {name}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
