"""`python -m conformance COMMAND`: validate case files, diff and merge results, render reports.

validate [PATHS]                  check case files and cases/expectations.toml without running anything
diff BASE.json NEW.json           what regressed, improved, appeared, disappeared or drifted; exit 1 on regression
merge A.json B.json ... -o OUT    one results file from shards, machines or framework versions
report RESULTS.json -o OUT.html   render the HTML report of any results file (merged ones included, or a
                                  .jsonl stream, also one cut off by a kill)
hashes [PATHS] [-o FILE]          content hashes of every generated tensor, to compare machines
reproduce CASE TARGET DTYPE       the Python source that repeats one check (what its record's
                                  `reproduction` holds; routine large-tier records leave it out)
replay RESULTS...                 judge recorded results (or an evidence file) again with a known-
                                  divergences file and the facts of the machine that made them
from-model MODEL -o DIR           a case file with every distinct convolution of a model (1-D to 3-D) (.onnx, .keras,
                                  or a torch module as package.module:factory); --weights keeps its kernels
bisect PACKAGE --good V -- SEL    the first release of PACKAGE whose checks in the pytest selection SEL differ
                                  from release V's (one environment per release, binary search)
history add|show|flaky            a history of runs in SQLite: since when a check fails, in which versions it
                                  passed, which checks are flaky
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from conformance import check_records, composites, expectations, history, machine, replay, runner
from conformance import contracts as accumulation_contracts
from conformance import diff as diffing
from conformance.adapters import all_targets
from conformance.cases import case_files, load_file, load_paths, materialize
from conformance.merging import merge
from conformance.overview import Overview
from conformance.records import observed
from conformance.report import write_report
from conformance.results import (
    ResultsFileError,
    atomic_write,
    atomic_write_text,
    read_results,
    result_key,
    write_json,
)
from conformance.run_environment import run_label


def _load_results(path: Path) -> dict[str, Any]:
    try:
        return read_results(path)
    except ResultsFileError as exc:
        raise SystemExit(str(exc)) from None


def _validate(args: argparse.Namespace) -> int:
    loaded = load_paths(args.paths)
    errors = list(loaded.errors)
    composite_ids = []
    for root in args.paths:
        path = root / composites.FILE_NAME if root.is_dir() else root
        if path.name == composites.FILE_NAME and path.exists():
            found, composite_errors = composites.load(path, str(path))
            errors += composite_errors
            composite_ids += [f"composites/{c.id}" for c in found]
    known = expectations.load(args.expectations, str(args.expectations))
    errors += known.errors
    contracts_path = args.expectations.with_name(accumulation_contracts.FILE_NAME)
    stated = accumulation_contracts.load(contracts_path, str(contracts_path))
    errors += stated.errors
    # Globs are checked against the whole corpus only: a subset of case files would make them look unmatched.
    if args.paths == [Path("cases")]:
        case_ids = [case.qualified_id for case in loaded.cases] + composite_ids
        target_ids = [t.id for t in all_targets()]
        errors += expectations.unmatched_globs(known.entries, case_ids, target_ids)
        errors += accumulation_contracts.unmatched(stated.entries, target_ids)
    for error in errors:
        print(error, file=sys.stderr)
    checks = sum(len(case.dtypes) for case in loaded.cases)
    print(
        f"{len(loaded.cases)} valid case(s), {checks} case x dtype combination(s), {len(composite_ids)} composite(s), "
        f"{len(known.entries)} known divergence(s), {len(stated.entries)} accumulation contract(s), "
        f"{len(errors)} error(s)"
    )
    return 1 if errors else 0


def _diff(args: argparse.Namespace) -> int:
    base, new = _load_results(args.base), _load_results(args.new)
    try:
        result = diffing.diff(base, new, drift_factor=args.drift_factor, drift_floor=args.drift_floor)
    except diffing.AmbiguousResults as exc:
        raise SystemExit(str(exc)) from None
    print(diffing.text_report(result, limit=args.limit))
    if args.html:
        atomic_write_text(args.html, diffing.html_report(result, str(args.base), str(args.new)))
        print(f"diff page: {args.html}")
    fail_on = tuple(args.fail_on.split(","))
    unknown = set(fail_on) - set(diffing.CATEGORIES)
    if unknown:
        raise SystemExit(
            f"--fail-on: unknown categories {sorted(unknown)}; choose from {', '.join(diffing.CATEGORIES)}"
        )
    return 1 if result.failed(fail_on) else 0


def _merge(args: argparse.Namespace) -> int:
    loaded = [(path, _load_results(path)) for path in args.inputs]
    # Runs are named by their files; files of one name (each profile's results.json, say) by their runs.
    stems = [path.stem for path in args.inputs]
    documents = [
        (path.stem if stems.count(path.stem) == 1 else run_label(document.get("environment") or {}), document)
        for path, document in loaded
    ]
    merged = merge(documents)
    atomic_write(args.output, lambda handle: write_json(merged, handle))
    summary = merged["summary"]
    print(
        f"merged {len(documents)} file(s), {len(merged['runs'])} run(s): {summary['total']} results, "
        f"{len(merged['conflicts'])} conflict(s) -> {args.output}"
    )
    if args.html:
        write_report(merged, args.html)
        print(f"report: {args.html}")
    return 0


def _report(args: argparse.Namespace) -> int:
    document = _load_results(args.results)
    if args.history:
        # The failing checks first (one pass), then the document read again for the report itself:
        # its records are read as they are used, never held.
        failing = [result_key(r) for r in document["results"] if history.failing(observed(r))]
        document = _load_results(args.results)
        with _history(args.history) as store:
            document["history"] = history.report_section(store, args.history, failing)
    write_report(document, args.output)
    print(f"report: {args.output}")
    return 0


def _hashes(args: argparse.Namespace) -> int:
    """The content hash of every generated tensor: compare two machines' lines, or keep them as golden."""
    loaded = load_paths(args.paths)
    for error in loaded.errors:
        print(error, file=sys.stderr)
    hashes = {
        f"{case.qualified_id}/{dtype}": {"input": data.x_hash, "kernel": data.w_hash}
        for case in loaded.cases
        if case.tier != "large"  # thousands of draws from the same generators: they add bytes, not coverage
        for dtype in case.dtypes
        for data in [materialize(case, dtype)]
    }
    text = json.dumps({"numpy": np.__version__, "hashes": dict(sorted(hashes.items()))}, indent=1) + "\n"
    if args.output:
        atomic_write_text(args.output, text)
        print(f"{len(hashes)} case x dtype hashes: {args.output}")
    else:
        sys.stdout.write(text)
    return 1 if loaded.errors else 0


def _reproduce(args: argparse.Namespace) -> int:
    """One check's reproduction, from the case files and the target's adapter (nothing is run)."""
    # Labelled as a run labels them (relative to the corpus directory's parent): the same source.
    cases = [c for path, root in case_files(args.cases) for c in load_file(path, root.parent).cases]
    case = next((c for c in cases if c.qualified_id == args.case), None)
    if case is None:
        near = sorted(c.qualified_id for c in cases if args.case.split("/")[-1] in c.qualified_id)[:5]
        hint = f"; similar: {', '.join(near)}" if near else ""
        print(f"error: no case {args.case!r} in {', '.join(map(str, args.cases))}{hint}", file=sys.stderr)
        return 2
    target = next((t for t in all_targets() if t.id == args.target), None)
    if target is None:
        print(f"error: no target {args.target!r} (the target ids are the records' `target`)", file=sys.stderr)
        return 2
    if args.dtype not in case.dtypes:
        print(
            f"error: {case.qualified_id} has no dtype {args.dtype!r} (it has {', '.join(case.dtypes)})", file=sys.stderr
        )
        return 2
    if mismatch := target.adapter.mismatch(case.op, case.rank):
        print(f"error: {mismatch} ({case.qualified_id})", file=sys.stderr)
        return 2
    print(runner.reproduction_of(case, target, args.dtype))
    return 0


def _replay_source(path: Path) -> tuple[replay.Machine, Iterable[dict[str, Any]], str]:
    """(the machine, the records, a note) of a results file, a stream, or an evidence file."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = handle.readline()
    except OSError as exc:  # (missing, a directory, unreadable: said as such, not as a traceback)
        raise SystemExit(f"error: {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        opening = json.loads(first)
    except ValueError:
        opening = None
    if isinstance(opening, dict) and opening.get("kind") == "run" and "cpu_flags" in opening:
        where, records = replay.read_evidence(path.read_text(encoding="utf-8").splitlines())
        return where, records, ""
    document = _load_results(path)
    environment = document.get("environment") or {}
    note = "" if environment.get("cpu_features") else " (it does not say its CPU: judged as this machine's)"
    return replay.Machine.of(environment, fallback=machine.this_cpu()), document["results"], note


def _replay(args: argparse.Namespace) -> int:
    known = expectations.load(args.expectations, str(args.expectations))
    for error in known.errors:
        print(error, file=sys.stderr)
    if known.errors:
        return 2
    corpus = {case.qualified_id: case for case in load_paths(args.cases).cases}  # (what abridged records leave out)
    glance = Overview()
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    harness = 0
    for path in args.results:
        where, records, note = _replay_source(path)
        count = 0
        for record in records:
            if (record.get("message") or "").startswith(check_records.HARNESS_FAILED):
                harness += 1  # no framework behaviour to judge: the harness's own failure
                continue
            judged = replay.rejudge(record, known.entries, where, corpus.get(record["case"]))
            before[record["outcome"]] += 1
            after[judged["outcome"]] += 1
            glance.add(judged)
            count += 1
        print(f"{path}: {count} record(s), machine {machine.describe(where.cpu)}{note}")
    print(f"as recorded: {', '.join(f'{n} {o}' for o, n in sorted(before.items()))}")
    print(f"judged by {args.expectations}: {', '.join(f'{n} {o}' for o, n in sorted(after.items()))}")
    for group in glance.failure_groups():
        near = f"; nearly known: {group.near_miss}" if group.near_miss else ""
        print(
            f"  {group.count:>5}  {group.framework} {group.kind}, {group.outcome}: {group.cause}; "
            f"e.g. {group.example}{near}"
        )
    if harness:
        print(f"{harness} record(s) were the harness's own failure ({check_records.HARNESS_FAILED}): not judged")
    print(f"{glance.failure_count} record(s) would fail a run")
    return 1 if glance.failure_count or harness else 0


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not 3 <= len(sizes) <= 5 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r}: three to five positive sizes, channels last: N,W,C (1-D), N,H,W,C (2-D) or N,D,H,W,C (3-D)"
        )
    return sizes


def _from_model(args: argparse.Namespace) -> int:
    from conformance import from_model

    try:
        found = from_model.read(args.model, args.input_shape)
    except from_model.ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = from_model.write_cases(found, args.model, args.output, weights=args.weights, tier=args.tier)
    loaded = load_paths([path])  # what was written must load: a reader's mistake shows here, not in a run
    for skipped in found.skipped:
        print(f"not a case: {skipped.layer}: {skipped.reason}")
    for error in loaded.errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{len(found.convolutions)} convolution(s), {len(loaded.cases)} case(s): {path}")
    return 1 if loaded.errors else 0


def _bisect(args: argparse.Namespace) -> int:
    from conformance import bisection

    try:
        return _bisect_releases(args)
    except bisection.BisectError as exc:  # (the registry lists nothing, an endpoint cannot be tested, ...)
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _bisect_releases(args: argparse.Namespace) -> int:
    from conformance import bisection

    if args.package in bisection.LARGE_BUILDS and not args.allow_large_downloads:
        raise bisection.BisectError(f"not bisecting {args.package}: {bisection.LARGE_BUILDS[args.package]}")
    selection = list(args.selection)
    # A token after an option without "=" is that option's value (-k cases), not a path.
    paths = [a for before, a in zip(["", *selection], selection, strict=False) if not a.startswith("-")
             and not (before.startswith("-") and "=" not in before)]  # fmt: skip
    if not paths and not any(a == "--cases" or a.startswith("--cases=") for a in selection):
        selection = ["cases", *selection]  # the corpus, not the harness's own tests
    checkout = Path.cwd()
    output = args.output or Path("reports", "bisect", f"{args.package}-{args.good}-{args.bad or 'newest'}")
    output.mkdir(parents=True, exist_ok=True)
    registry = bisection.PipRegistry()
    bad = args.bad or bisection.newest(registry.versions(args.package))
    environments = bisection.ReleaseEnvironments(
        args.package, checkout, selection, output.resolve(), cache=args.env_cache, extra=args.with_,
        timeout_s=args.timeout, log=print,
    )  # fmt: skip
    if args.pip:
        environments.uv = None
    known_flaky: list[bisection.Key] = []
    good = args.good
    if args.history or good == "last-passing":
        if args.history is None:
            raise SystemExit("error: --good last-passing reads a history of runs: give --history PATH")
        with _history(args.history) as store:
            known_flaky = [f.key for f in store.flaky()]
            if good == "last-passing":
                ran = environments.run(bad, 0)
                if isinstance(ran, bisection.Skipped):
                    raise SystemExit(f"error: {args.package} {bad} cannot be tested: {ran.reason}")
                failing = [k for k, o in ran.observations.items() if history.failing(o.outcome)]
                if not failing:
                    raise SystemExit(f"error: every check of the selection is conformant on {args.package} {bad}")
                found = store.last_passing_version(args.package, failing)
                if found is None:
                    raise SystemExit(
                        f"error: {args.history} has no run in which {args.package}'s {len(failing)} failing "
                        "check(s) of this selection passed: give --good VERSION"
                    )
                good = found
                print(f"the last release in {args.history} in which they passed: {args.package} {good}")
    result = bisection.search(
        args.package, good, bad, registry, environments, compare=args.compare, ratio_factor=args.ratio_factor,
        endpoint_repeats=args.repeats, known_flaky=known_flaky, log=print,
        excluded=lambda version: any(version in spec for spec in args.skip),
    )  # fmt: skip
    text = f"$ python -m conformance {shlex.join(args.argv)}\n\n" + bisection.render(result)
    total, own = bisection.tree_bytes(environments.cache)
    text += (
        f"environments in {environments.cache}: {total / 2**30:.2f} GiB of files, {own / 2**30:.2f} GiB of their "
        "own (the rest are links into uv's cache)\n"
    )
    print(text, end="")
    atomic_write_text(output / "bisect.txt", text)
    print(f"log: {output / 'bisect.txt'}")
    return 0


@contextlib.contextmanager
def _history(path: Path) -> Iterator[history.History]:
    """The history store, its refusal (not SQLite, an older or newer schema) said as an error line."""
    try:
        store = history.History(path)
    except history.HistoryError as exc:
        raise SystemExit(f"error: {exc}") from None
    with store:
        yield store


def _history_add(args: argparse.Namespace) -> int:
    status = 0
    with _history(args.history) as store:
        for path in args.results:
            try:
                runs, added = store.add_file(path)
            except history.HistoryError as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = 1
                continue
            print(f"{path}: {runs} run(s) {'added' if added else 'already in the history'} -> {args.history}")
    return status


def _observation_text(seen: history.Observation) -> str:
    version = seen.framework_version or "?"
    return f"{seen.run.created[:10]} {version}{f' [{seen.profile}]' if seen.profile else ''}"


def _history_show(args: argparse.Namespace) -> int:
    with _history(args.history) as store:
        found = store.checks(args.case, args.target, args.dtype, failing_only=args.failing)
        runs = len(store.runs())
    for check in found[: args.limit]:
        case, target, dtype = check.key
        lines = [f"{case} [{target}, {dtype}]"]
        if check.first_failing:
            lines.append(f"  failing since {_observation_text(check.first_failing)} ({check.first_failing.observed})")
        if check.last_passing:
            lines.append(f"  last passed {_observation_text(check.last_passing)}")
        lines.append(f"  passed in: {', '.join(check.passed_in) or 'no version'}")
        trail = [f"{s.framework_version or '?'} {s.observed}" for s in check.observations]
        lines.append(f"  runs, oldest first: {'; '.join(trail)}")
        print("\n".join(lines))
    more = f" (first {args.limit} shown)" if len(found) > args.limit else ""
    print(f"{len(found)} check(s){' failing now' if args.failing else ''} over {runs} run(s){more}")
    return 0


def _history_flaky(args: argparse.Namespace) -> int:
    with _history(args.history) as store:
        found = store.flaky(args.case, args.target, args.dtype)
    for flaky in found[: args.limit]:
        case, target, dtype = flaky.key
        seen = "; ".join(
            f"{s.run.created[:19]} {s.observed}" + (f" {s.output}" if flaky.what == "bits" and s.output else "")
            for s in flaky.observations
        )
        print(f"{case} [{target}, {dtype}] {flaky.edition} on {flaky.machine}: {flaky.what} differs: {seen}")
    print(f"{len(found)} flaky check(s): outcome or bits differ between runs of one release on one machine")
    return 1 if found else 0


def _specifier(text: str) -> SpecifierSet:
    try:
        return SpecifierSet(text)
    except InvalidSpecifier:
        raise argparse.ArgumentTypeError(f"{text!r}: a version specifier such as '>=0.5,<0.6' or '==3.2.1'") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="conformance", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    validate = commands.add_parser("validate", help="load and check case files; exit 1 on any error")
    validate.add_argument("paths", nargs="*", type=Path, default=[Path("cases")])
    validate.add_argument("--expectations", type=Path, default=Path("cases", expectations.FILE_NAME))
    validate.set_defaults(run=_validate)

    compare = commands.add_parser("diff", help="compare two results files; exit 1 when anything regressed")
    compare.add_argument("base", type=Path)
    compare.add_argument("new", type=Path)
    compare.add_argument("--html", type=Path, help="also write the diff as an HTML page")
    compare.add_argument(
        "--drift-factor", type=float, default=2.0, help="report a pass whose error/bound grew by more than this"
    )
    compare.add_argument("--drift-floor", type=float, default=0.05, help="ignore drift below this error/bound")
    compare.add_argument(
        "--fail-on",
        default=",".join(diffing.DEFAULT_FAIL_ON),
        help=f"comma-separated categories that make the exit status 1 (default: regressed); any of "
        f"{', '.join(diffing.CATEGORIES)}",
    )
    compare.add_argument("--limit", type=int, default=50, help="lines per category in the terminal")
    compare.set_defaults(run=_diff)

    combine = commands.add_parser("merge", help="merge results files into one")
    combine.add_argument("inputs", nargs="+", type=Path)
    combine.add_argument("-o", "--output", type=Path, required=True)
    combine.add_argument("--html", type=Path, help="also render the merged report")
    combine.set_defaults(run=_merge)

    render = commands.add_parser("report", help="render the HTML report of a results file")
    render.add_argument("results", type=Path)
    render.add_argument("-o", "--output", type=Path, default=Path("reports/index.html"))
    render.add_argument("--history", type=Path, help="show since when each failing check fails (a history file)")
    render.set_defaults(run=_report)

    digest = commands.add_parser("hashes", help="content hashes of every case's generated input and kernel")
    digest.add_argument("paths", nargs="*", type=Path, default=[Path("cases")])
    digest.add_argument("-o", "--output", type=Path, help="write them to this JSON file")
    digest.set_defaults(run=_hashes)

    again = commands.add_parser("reproduce", help="the Python source that repeats one check")
    again.add_argument("case", help="the record's `case`, e.g. large/draws-k3-r1-s1-same-d61")
    again.add_argument("target", help="the record's `target`, e.g. torch.conv2d-cpu")
    again.add_argument("dtype")
    again.add_argument("--cases", nargs="+", type=Path, default=[Path("cases")], help="the corpus (default: cases/)")
    again.set_defaults(run=_reproduce)

    judge = commands.add_parser("replay", help="judge recorded results again with a known-divergences file")
    judge.add_argument("results", nargs="+", type=Path, help="results files, streams or evidence files")
    judge.add_argument("--expectations", type=Path, default=Path("cases", expectations.FILE_NAME))
    judge.add_argument("--cases", nargs="+", type=Path, default=[Path("cases")], help="the corpus (default: cases/)")
    judge.set_defaults(run=_replay)

    model = commands.add_parser(
        "from-model", help="a case file with every distinct 1-D, 2-D or 3-D convolution of a model"
    )
    model.add_argument("model", help="an .onnx or .keras file, or a torch module as package.module:factory")
    model.add_argument("-o", "--output", type=Path, required=True, help="the directory for the case file")
    model.add_argument(
        "--input-shape",
        type=_input_shape,
        help="N,W,C, N,H,W,C or N,D,H,W,C: the model's input, channels last (for torch)",
    )
    model.add_argument("--weights", action="store_true", help="use the model's own kernels (an .npz beside it)")
    model.add_argument("--tier", choices=("default", "extended", "large"), default="default")
    model.set_defaults(run=_from_model)

    search = commands.add_parser(
        "bisect",
        help="the first release of a package whose checks differ from a good release's",
        description="Binary search over the releases of PACKAGE between --good and --bad: one environment "
        "per release (cached), the pytest selection after -- run in each, the first release whose checks "
        "differ from the good one's named, with the releases tried and the diff at the boundary. Run it "
        "from the checkout (its cases/ and constraints.txt).",
    )
    search.add_argument("package", help="a pip distribution: keras, jax, onnxruntime, tensorflow-cpu, ...")
    search.add_argument("--good", required=True, help="a release that behaves as wanted, or last-passing (--history)")
    search.add_argument("--bad", help="a release that does not (default: the newest in the registry)")
    search.add_argument("--compare", choices=("outcome", "bits", "ratio"), default="outcome",
                        help="what counts as a change: the observed outcomes; also the output bits; also "
                        "error ratios beyond --ratio-factor")  # fmt: skip
    search.add_argument("--ratio-factor", type=float, default=2.0)
    search.add_argument("--repeats", type=int, default=2,
                        help="runs of the good and the bad release: checks whose repeats disagree are flaky, "
                        "set aside and reported, not bisected (default 2)")  # fmt: skip
    search.add_argument("--history", type=Path, help="a history of runs: its flaky checks are set aside")
    search.add_argument("--skip", type=_specifier, action="append", default=[], metavar="SPEC",
                        help="releases known broken, never run: '>=0.5,<0.6', '==3.2.1' (repeatable)")  # fmt: skip
    search.add_argument("--with", dest="with_", action="append", default=[], metavar="REQUIREMENT",
                        help="another requirement in every environment (torch==2.13.0, say)")  # fmt: skip
    search.add_argument("--env-cache", type=Path, default=None, help="where the environments are kept "
                        "(default ~/.cache/dilated-conformance/bisect-environments)")  # fmt: skip
    search.add_argument("--pip", action="store_true", help="make the environments with pip even where uv is installed")
    search.add_argument("--allow-large-downloads", action="store_true",
                        help="bisect a package whose registry releases are multi-GB GPU builds (torch)")  # fmt: skip
    search.add_argument("--timeout", type=float, default=3600.0, help="seconds per run of the selection")
    search.add_argument("-o", "--output", type=Path, help="results, logs and bisect.txt (default reports/bisect/...)")
    search.set_defaults(run=_bisect, selection=[])
    search.epilog = "pytest arguments after --: -k, -m, --cases, --conformance-target (default: the whole corpus)"

    argv = sys.argv[1:] if argv is None else argv
    # The pytest selection follows "--": split it off first, for argparse would take its options as ours.
    selection = argv[argv.index("--") + 1 :] if "--" in argv else []
    past = commands.add_parser("history", help="a history of runs in SQLite: add, show, flaky")
    past_commands = past.add_subparsers(dest="history_command", required=True)
    add = past_commands.add_parser("add", help="add results files (a run, a merged file) to the history")
    add.add_argument("results", nargs="+", type=Path)
    show = past_commands.add_parser("show", help="per check: outcomes over runs, since when it fails, where it passed")
    show.add_argument("case", nargs="?", default="*", help="a glob over case ids (default: all)")
    show.add_argument("--failing", action="store_true", help="only checks whose newest run fails")
    flaky = past_commands.add_parser("flaky", help="checks whose outcome or bits differ between runs of one release")
    flaky.add_argument("case", nargs="?", default="*", help="a glob over case ids (default: all)")
    for sub, run in ((add, _history_add), (show, _history_show), (flaky, _history_flaky)):
        sub.add_argument("--history", type=Path, default=history.DEFAULT_PATH, help=f"default {history.DEFAULT_PATH}")
        if sub is not add:
            sub.add_argument("--target", default="*", help="a glob over target ids")
            sub.add_argument("--dtype", default="*")
            sub.add_argument("--limit", type=int, default=50, help="checks printed")
        sub.set_defaults(run=run)

    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if args.command == "bisect":
        args.selection, args.argv = selection, argv
    if args.command == "bisect" and args.env_cache is None:
        from conformance.bisection import default_cache

        args.env_cache = default_cache()
    status: int = args.run(args)
    return status
