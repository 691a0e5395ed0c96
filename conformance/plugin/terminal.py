"""What the plugin prints: a failing check's text (with its reproduction), and the run's summary."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from conformance.overview import BUCKETS, Overview
from conformance.plugin.options import spaced_values

# Terminal control characters and bidirectional overrides in case text or framework messages could
# clear the screen, recolour it or reorder what a reader sees ("Trojan source"): shown escaped.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def failure_text(record: Mapping[str, Any]) -> str:
    lines = [
        f"{record['outcome']}: case {record['case']} ({record['case_file']}) on {record['target']}, {record['dtype']}",
        f"  input {record['input_shape']} NHWC, kernel {record['kernel_shape']} HWIO, rate {record['rate']}, "
        f"stride {record['stride']}, padding {record['padding']} -> pads {record['pads']}, groups {record['groups']}",
        f"  {record['message']}",
    ]
    if record.get("error_ratio") is not None or record.get("max_abs_error") is not None:
        lines.append(
            f"  max |error| {record['max_abs_error']}, max rel error {record['max_rel_error']}, "
            f"max ulp {record['max_ulp']}, error/bound {record['error_ratio']}"
        )
    if record.get("reproduction"):
        lines += ["", "reproduction:", record["reproduction"]]
    return "\n".join(lines)


def write_summary(
    terminal: Any,
    document: dict[str, Any],
    glance: Overview,
    lost_checks: dict[str, dict[str, Any]],
    preserved: Path | None,
    recovered_report: Path | None,
    json_path: Path,
    html_path: Path | None,
    retired: tuple[str, ...] = (),
) -> None:
    """One screen: counts per outcome; a table per framework, operation and rank; the targets that ran
    nothing, once per reason; one line per failing check; each framework warning once per target;
    the known divergences that need an edit, targets stopped by crashes, an interrupted earlier
    run, and where the results are. `glance`: the overview of the document's records, made as they
    were written (reading them back would parse every record once more)."""
    summary = document["summary"]
    counts = ", ".join(f"{n} {o}" for o, n in summary["by_outcome"].items())
    terminal.write_sep("-", "conformance")
    terminal.write_line(f"{summary['total']} checks: {counts}")
    _write_table(terminal, glance)
    for idle in glance.idle():
        names = idle["targets"]
        shown = _first(names, 3)
        line = f"ran nothing here: {len(names)} target(s), {idle['checks']} checks: {idle['reason']}"
        terminal.write_line(terminal_safe(line))
        terminal.write_line(terminal_safe(f"  {shown}"))
    if glance.failure_count:
        _write_failure_groups(terminal, glance)
    for warning in glance.warnings():
        names = warning["targets"]
        shown = _first(names, 4)
        terminal.write_line(
            terminal_safe(
                f"{warning['category']} at {warning['where']} ({warning['checks']} check(s) of {shown}): "
                f"{warning['message']}"
            ),
            yellow=True,
        )
    if document["case_errors"]:
        terminal.write_line(f"{len(document['case_errors'])} invalid case(s) or file(s)", red=True)
    for entry in document["expectations"]:
        if entry["status"] in ("fixed", "partly fixed", "stale", "changed"):  # the ones that need an edit
            narrow = f": {entry['narrow']}" if entry.get("narrow") else ""
            terminal.write_line(
                f"known divergence {entry['id']}: {entry['status']} "
                f"({entry['xfail']} xfail, {entry['xpass']} xpass, {entry['other']} other failures){narrow}",
                yellow=True,
            )
    for target, tally in sorted(lost_checks.items()):
        stopped = tally["stopped"]
        terminal.write_line(
            f"{target}: {tally['count']} check(s) crashed or timed out (first: {tally['first']})"
            + ("; its remaining checks were skipped (--conformance-crash-limit)" if stopped else ""),
            red=True,
        )
    if retired:
        line = (
            f"{len(retired)} worker(s) replaced after a check ran out of memory or left it held (first: {retired[0]}); "
            "the checks it would have run next ran on a fresh worker"
        )
        terminal.write_line(terminal_safe(line), yellow=True)
    if preserved is not None:
        drawn = f"; its report: {recovered_report}" if recovered_report else ""
        terminal.write_line(
            f"an earlier run was interrupted; its streamed results are kept in {preserved}{drawn}", yellow=True
        )
    stopped = document.get("interrupted")
    if stopped:
        terminal.write_line(
            f"stopped by {stopped['signal']}: the {stopped['results']} check(s) finished before it are in the results "
            "and the report, marked interrupted; its workers and their framework processes were ended",
            yellow=True,
        )
    terminal.write_line(f"results: {json_path}")
    if html_path is not None:
        terminal.write_line(f"report: {html_path}")
    notice = spaced_cases_notice(terminal.config)
    if notice:
        terminal.write_line(terminal_safe(notice), yellow=True)


GROUP_LINES = 12  # failure groups shown; the report and the results hold every check


def _write_failure_groups(terminal: Any, glance: Overview) -> None:
    """The failing checks by cause: a framework's regression fails hundreds of checks at once, which
    is when the terminal must stay short. Each check is in the report and the results JSON, and
    pytest lists each one with -v (its failure and reproduction) or -rf."""
    groups = glance.failure_groups()
    terminal.write_line(
        f"failing checks: {glance.failure_count} in {len(groups)} group(s) by cause "
        "(each check: the report, the results JSON, or pytest -v / -rf)",
        red=True,
        bold=True,
    )
    for group in groups[:GROUP_LINES]:
        dtypes = ", ".join(sorted(group.dtypes))
        head = f"  {group.count:>5}  {group.framework} {group.kind}, {group.outcome} ({dtypes}): {group.cause}"
        terminal.write_line(terminal_safe(head), red=True)
        terminal.write_line(terminal_safe(f"         e.g. {group.example}: {group.example_detail}"))
        if group.near_miss:
            terminal.write_line(terminal_safe(f"         nearly known: {group.near_miss}"), yellow=True)
    if len(groups) > GROUP_LINES:
        rest = sum(group.count for group in groups[GROUP_LINES:])
        terminal.write_line(f"  ... and {len(groups) - GROUP_LINES} more group(s), {rest} check(s) (all in the report)")


def _first(names: list[str], count: int) -> str:
    return ", ".join(names[:count]) + (f", ... ({len(names) - count} more)" if len(names) > count else "")


_COLUMNS = ("targets", "checks", *BUCKETS)


def _write_table(terminal: Any, glance: Overview) -> None:
    groups = glance.groups("operation")
    if not groups:
        return
    width = max(len(f"{framework} {operation}") for framework, operation in groups) + 2
    terminal.write_line("".rjust(width) + "".join(f"{c:>12}" for c in _COLUMNS) + "  worst error/bound")
    for (framework, operation), tally in groups.items():
        row = tally.as_dict()
        worst = "" if row["worst_ratio"] is None else f"{row['worst_ratio']:.3g}"
        line = f"{framework} {operation}".ljust(width) + "".join(f"{row[c]:>12}" for c in _COLUMNS) + f"  {worst}"
        terminal.write_line(terminal_safe(line), red=bool(row["failing"]))


class _RuledOut:
    """What pytest's deselected count holds for a check `-m` ruled out while collecting (no item
    was ever made for it; one shared object stands for each)."""

    nodeid = "(a check -m ruled out while collecting)"
    count_towards_summary = True


RULED_OUT = _RuledOut()


def report_deselected(config: pytest.Config, checks: int, *, before_collection_report: bool) -> None:
    """Tell pytest about `checks` deselected checks. Before its "collected N items" line, they also
    count as collected, or that line would say fewer were selected than were collected and run."""
    if checks <= 0:
        return
    terminal: Any = config.pluginmanager.get_plugin("terminalreporter")
    if before_collection_report and hasattr(terminal, "_numcollected"):
        terminal._numcollected += checks  # (private: pytest counts only the items it was shown)
    config.hook.pytest_deselected(items=[RULED_OUT] * checks)


def spaced_cases_notice(config: pytest.Config) -> str | None:
    """pytest settles the rootdir and its configuration file before any plugin loads, so in
    `--cases PATH` (with a space) it takes PATH for a test path (pytest-dev/pytest#8846): the rootdir
    becomes PATH's, and the configuration of where pytest was run may be lost. Says so when it was."""
    spaced = spaced_values(config, "--cases")
    if not spaced:
        return None
    try:
        from _pytest.config.findpaths import determine_setup  # (private: the rule pytest itself applies)

        rootpath, inipath, *_ = determine_setup(
            inifile=config.option.inifilename,
            override_ini=config.option.override_ini,
            args=list(config.option.file_or_dir or []),
            rootdir_cmd_arg=config.option.rootdir or None,
            invocation_dir=config.invocation_params.dir,
        )
    except Exception:
        return None
    if (rootpath, inipath) == (config.rootpath, config.inipath):
        return None
    return (
        f"--cases {spaced[0]}: pytest read the path before the plugin loaded (pytest-dev/pytest#8846), so the "
        f"rootdir is {config.rootpath} with {config.inipath or 'no configuration file'}, not {rootpath} with "
        f"{inipath or 'none'}; write --cases={spaced[0]} to keep those"
    )


def wants_each_failure(config: pytest.Config) -> bool:
    """Whether the run asked pytest to show every failing check: -v, or -r naming f, a or A (the
    default -r is fE, so only a -r on the command line counts)."""
    if config.option.verbose > 0:
        return True
    given = spaced_values(config, "-r")
    given += [arg[2:] for arg in map(str, config.invocation_params.args) if arg.startswith("-r")]
    return any(char in chars for chars in given for char in "faA")


HYPOTHESIS_PLUGIN = "hypothesispytest"  # (Hypothesis' pytest plugin, by its entry point's name)


def leave_out_an_empty_hypothesis_summary(config: pytest.Config) -> None:
    """Unregister Hypothesis' pytest plugin before the terminal summary where it has nothing to say.
    Its summary imports Hypothesis to look for observability files (and Hypothesis, through its
    entry points, trio): 0.13 s at the end of the controller and of each worker, the controller's
    on the run's last stretch, though no case is a property-based test (not yet reported upstream;
    the plugin otherwise defers that import until a test uses Hypothesis or an option names it,
    HypothesisWorks/hypothesis#3159). It has something to say only where Hypothesis is imported
    already (a test used it in this process, or an option such as --hypothesis-show-statistics
    was given) or where a test failed (a failing property-based test's examples travel on its
    report to the controller)."""
    if config.pluginmanager.get_plugin(HYPOTHESIS_PLUGIN) is None or "hypothesis" in sys.modules:
        return
    if getattr(config.pluginmanager.get_plugin("terminalreporter"), "stats", {}).get("failed"):
        return
    config.pluginmanager.unregister(name=HYPOTHESIS_PLUGIN)
