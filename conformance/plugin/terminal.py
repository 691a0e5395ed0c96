"""What the plugin prints: a failing check's text (with its reproduction), and the run's summary."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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
    lost_checks: dict[str, dict[str, Any]],
    preserved: Path | None,
    recovered_report: Path | None,
    json_path: Path,
    html_path: Path | None,
) -> None:
    """Counts per outcome, the known divergences that need an edit, targets stopped by crashes,
    an interrupted earlier run, and where the results are."""
    summary = document["summary"]
    counts = ", ".join(f"{n} {o}" for o, n in summary["by_outcome"].items())
    terminal.write_sep("-", "conformance")
    terminal.write_line(f"{summary['total']} checks: {counts}")
    if document["case_errors"]:
        terminal.write_line(f"{len(document['case_errors'])} invalid case(s) or file(s)")
    for entry in document["expectations"]:
        if entry["status"] in ("fixed", "partly fixed", "stale", "changed"):  # the ones that need an edit
            terminal.write_line(
                f"known divergence {entry['id']}: {entry['status']} "
                f"({entry['xfail']} xfail, {entry['xpass']} xpass, {entry['other']} other failures)",
                yellow=True,
            )
    for target, tally in sorted(lost_checks.items()):
        stopped = tally["stopped"]
        terminal.write_line(
            f"{target}: {tally['count']} check(s) crashed or timed out (first: {tally['first']})"
            + ("; its remaining checks were skipped (--conformance-crash-limit)" if stopped else ""),
            red=True,
        )
    if preserved is not None:
        drawn = f"; its report: {recovered_report}" if recovered_report else ""
        terminal.write_line(
            f"an earlier run was interrupted; its streamed results are kept in {preserved}{drawn}", yellow=True
        )
    terminal.write_line(f"results: {json_path}")
    if html_path is not None:
        terminal.write_line(f"report: {html_path}")
