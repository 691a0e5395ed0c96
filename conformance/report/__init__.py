"""The HTML conformance report: one self-contained file rendered from a results (or merged) JSON document.

The page carries its data as gzip + base64 inside a `<script type="application/octet-stream">`
element and draws everything in the browser with `textContent` (never `innerHTML` on data), so
no case-supplied text can become markup, and a 20,000-result report stays a few megabytes.
The table of cases is virtualised: only the rows on screen exist in the DOM.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import groupby
from pathlib import Path
from typing import IO, Any

from conformance import frameworks
from conformance.overview import Overview
from conformance.record_files import RecordFile, sort_records
from conformance.results import atomic_write, runs_of, summarize

ASSETS = Path(__file__).with_name("assets")
OVERVIEW_FAILURES = 200  # failing checks listed on the first screen's list (the matrix has them all)
# Above this many results a conformant or not-run cell keeps its outcome, ratio, message and time but
# not its reproduction or error details, so a million-check report stays one file that opens in
# seconds; every failing, excused or surprising cell keeps everything (results.json has all records).
FULL_DETAIL_RESULTS = 200_000
_BRIEF_OUTCOMES = frozenset(("pass", "expected-error", "skip", "unsupported"))
_BRIEF_FIELDS = (("run", "run"), ("t", "duration_s"))


def _split_reproduction(text: str) -> tuple[str, str]:
    """(the tensors, the call): the tensors are shared by every target of a case, so they are stored once."""
    marker = text.find("\n# case ")
    return (text[: marker + 1], text[marker + 1 :]) if marker >= 0 else ("", text)


class _Strings:
    """A string table: reproductions and messages repeat across targets, so cells hold indices."""

    def __init__(self) -> None:
        self.table: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, text: str | None) -> int:
        text = text or ""
        if text not in self.index:
            self.index[text] = len(self.table)
            self.table.append(text)
        return self.index[text]


CASE_FIELDS = (
    "case_file",
    "operation",
    "output_padding",
    "description",
    "tags",
    "input_shape",
    "kernel_shape",
    "output_shape",
    "rate",
    "stride",
    "padding",
    "pads",
    "groups",
    "expect",
    "input_sha256",
    "kernel_sha256",
)


def _version_text(record: Mapping[str, Any]) -> str:
    """The framework's version, and a front-end's backend beside it: "3.15.1 (jax 0.10.2)"."""
    version = str(record.get("framework_version") or "")
    framework = frameworks.get(record["framework"])
    if framework is not None and framework.backend and record.get("backend_version"):
        version += f" ({framework.backend} {record['backend_version']})"
    return version


_CELL_FIELDS = (
    ("ae", "max_abs_error"),
    ("re", "max_rel_error"),
    ("u", "max_ulp"),
    ("w", "worst"),
    ("em", "error_map"),
    ("bd", "bounds"),
    ("gs", "got_shape"),
    ("gd", "got_dtype"),
    ("ob", "observed_outcome"),
    ("k", "expectation"),
    ("run", "run"),
    ("t", "duration_s"),
)
_COLUMN_ORDER = ("framework", "op", "variant", "device", "precision", "version")


def _column_key(record: Mapping[str, Any]) -> str:
    return f"{record['target']}@{record.get('framework_version') or ''}"


def _column(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "key": _column_key(record),  # the cells' key (the version shown may say more)
        "target": record["target"],
        "framework": record["framework"],
        "op": record["op"],
        "variant": record.get("variant") or "",  # an execution mode or oracle (older results: none)
        "version": _version_text(record),
        "device": record["device"],
        "precision": record["precision"],
    }


def _ordered_by_case(records: Iterable[Mapping[str, Any]]) -> Iterator[list[Mapping[str, Any]]]:
    """Each case's records together. A results file is in case order; a hand-made list may not be,
    and is sorted (on disk) first."""
    if not isinstance(records, RecordFile):
        records = sort_records(records)
    for _, group in groupby(records, key=lambda r: r["case"]):
        yield list(group)


def write_data(document: dict[str, Any], emit: Callable[[str], object]) -> None:
    """The report's data model as JSON text, in pieces: cases, columns (target x framework version),
    rows (case x dtype, in case order) with their cells, and a table of the messages cells share.

    Two passes over the records, holding one case's records at a time: the first finds the cases,
    columns and totals, the second writes the rows. A row keeps its cells' reproductions (the
    tensors part, shared by a row's targets, once per row); messages repeat across cases and are
    numbered in `strings`.
    """
    records = document["results"]
    cases: dict[str, dict[str, Any]] = {}
    columns: dict[str, dict[str, Any]] = {}
    overview = Overview(failure_limit=OVERVIEW_FAILURES)
    for group in _ordered_by_case(records):
        case = cases.setdefault(group[0]["case"], {"id": group[0]["case"]})
        for record in group:
            for name in CASE_FIELDS:  # a skipped record lacks hashes: take them from any record that has them
                if case.get(name) in (None, "") and record.get(name) is not None:
                    case[name] = record[name]
            if _column_key(record) not in columns:
                columns[_column_key(record)] = _column(record)
            overview.add(record)
    ordered_columns = sorted(columns.values(), key=lambda c: tuple(c[k] for k in _COLUMN_ORDER))
    for number, column in enumerate(ordered_columns):
        column["n"] = number
    summary = summarize(records)  # from the records: a hand-made file may lack it
    brief = summary["total"] > FULL_DETAIL_RESULTS
    header = {
        "title": document.get("title") or "Dilated convolution conformance",
        "created": document.get("created"),
        "runs": runs_of(document),
        "summary": summary,
        "brief": {"limit": FULL_DETAIL_RESULTS, "outcomes": sorted(_BRIEF_OUTCOMES)} if brief else None,
        "overview": overview.as_dict(),
        "case_errors": document.get("case_errors", []),
        "expectations": document.get("expectations", []),
        "contracts": document.get("contracts", []),
        "conflicts": document.get("conflicts", []),
        "cases": cases,
        "columns": ordered_columns,
    }
    opening = json.dumps(header, separators=(",", ":"), allow_nan=False)
    emit(opening[:-1] + ',"rows":[')
    messages = _Strings()
    first = True
    for group in _ordered_by_case(records):
        for row in _rows(group, columns, messages, brief):
            emit(("" if first else ",") + json.dumps(row, separators=(",", ":"), allow_nan=False))
            first = False
    emit('],"strings":' + json.dumps(messages.table, separators=(",", ":")) + "}")


def _rows(
    group: list[Mapping[str, Any]], columns: Mapping[str, dict[str, Any]], messages: _Strings, brief: bool
) -> list[dict[str, Any]]:
    """One case's rows, by dtype. `brief`: conformant and not-run cells without their details."""
    rows: dict[str, dict[str, Any]] = {}
    tensors: dict[str, _Strings] = {}
    for record in group:
        row = rows.setdefault(record["dtype"], {"case": record["case"], "dtype": record["dtype"], "cells": {}})
        cell = {
            "o": record["outcome"],
            "r": record.get("error_ratio"),
            "x": record.get("exact", False),
            "m": messages(record.get("message")),
        }
        if brief and record["outcome"] in _BRIEF_OUTCOMES:
            cell.update((short, record[name]) for short, name in _BRIEF_FIELDS if record.get(name) is not None)
        else:
            data_part, call_part = _split_reproduction(record.get("reproduction") or "")
            cell["rp"] = [tensors.setdefault(record["dtype"], _Strings())(data_part), call_part]
            for short, name in _CELL_FIELDS:
                if record.get(name) is not None:
                    cell[short] = record[name]
        row["cells"][columns[_column_key(record)]["n"]] = cell
    for dtype, row in rows.items():
        row["rd"] = tensors[dtype].table if dtype in tensors else []
    return [rows[dtype] for dtype in sorted(rows)]


def pack(document: dict[str, Any]) -> dict[str, Any]:
    """The report's data model as one object (for tests and tools; the report itself is streamed)."""
    pieces: list[str] = []
    write_data(document, pieces.append)
    data: dict[str, Any] = json.loads("".join(pieces))
    return data


class _Base64Gzip:
    """Text in, gzip then base64 out to `handle`, as it comes: the data is never one string."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip member
        self.pending = b""

    def write(self, text: str) -> None:
        self._encode(self.compressor.compress(text.encode("utf-8")))

    def close(self) -> None:
        self._encode(self.compressor.flush())
        self.handle.write(base64.b64encode(self.pending).decode("ascii"))

    def _encode(self, compressed: bytes) -> None:
        self.pending += compressed
        whole = len(self.pending) - len(self.pending) % 3  # base64 of whole 3-byte groups joins up
        if whole >= 1 << 16:
            self.handle.write(base64.b64encode(self.pending[:whole]).decode("ascii"))
            self.pending = self.pending[whole:]


def render_to(document: dict[str, Any], handle: IO[str]) -> None:
    template = (ASSETS / "report.html").read_text(encoding="utf-8")
    # Split first, then join: no inserted text is ever searched for the next placeholder.
    head, rest = template.split("/*STYLE*/")
    middle, rest = rest.split("DATA_BASE64")
    before_script, tail = rest.split("/*SCRIPT*/")
    handle.write(head + (ASSETS / "report.css").read_text(encoding="utf-8") + middle)
    encoder = _Base64Gzip(handle)
    write_data(document, encoder.write)
    encoder.close()
    script = (ASSETS / "report.js").read_text(encoding="utf-8").replace("</script", "<\\/script")
    handle.write(before_script + script + tail)


def render(document: dict[str, Any]) -> str:
    buffer = io.StringIO()
    render_to(document, buffer)
    return buffer.getvalue()


def write_report(document: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda handle: render_to(document, handle))


def embedded_data(html: str) -> dict[str, Any]:
    """The data model inside a rendered report (what the page's script draws): for tests and tools."""
    start = html.index('id="report-data">') + len('id="report-data">')
    data: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(html[start : html.index("</script>", start)])))
    return data
