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
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from conformance import frameworks
from conformance.merging import runs_of
from conformance.overview import Overview
from conformance.record_files import RecordFile, compact_json, scratch_directory, sort_records
from conformance.records import edition
from conformance.results import Summary, atomic_write

ASSETS = Path(__file__).with_name("assets")
# Above this many results a conformant or not-run cell keeps its outcome, ratio, message and time but
# not its reproduction or error details, so a million-check report stays one file that opens in
# seconds; every failing, excused or surprising cell keeps everything (results.json has all records).
FULL_DETAIL_RESULTS = 200_000
_BRIEF_OUTCOMES = frozenset(("pass", "expected-error", "skip", "unsupported"))


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
    """The framework's version, a front-end's backend beside it, and the machine profile where it is
    not the host's: "3.15.1 (jax 0.10.2)", "2.21.0 [onednn-off]"."""
    version = str(record.get("framework_version") or "")
    framework = frameworks.get(record["framework"])
    if framework is not None and framework.backend and record.get("backend_version"):
        version += f" ({framework.backend} {record['backend_version']})"
    return f"{version} [{record['profile']}]" if record.get("profile") else version


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
    return f"{record['target']}@{edition(record)}"


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


class ReportData:
    """The report's data model, built from records in case order, one record at a time: the
    controller feeds it in the same pass that writes the results JSON, so a run's end reads its
    records once. It holds the cases, columns and first-screen totals; each case's rows are written
    to a scratch file as the case ends (a row keeps its cells' reproductions, the tensors part,
    shared by a row's targets, once per row; messages repeat across cases and are numbered in
    `strings`).

    `total` (the number of records to come) decides whether conformant and not-run cells keep
    their details (`FULL_DETAIL_RESULTS`). The rows file goes in `directory` (the controller's:
    its run's spill directory beside the results, not a temporary directory that may be in memory),
    made when the first case ends.

    A part of a pass made in another process is `merge`d: it pickles with its rows flushed to its
    own file, which the merging process reads and numbers again.
    """

    def __init__(self, total: int, directory: Path | None = None) -> None:
        self.brief = total > FULL_DETAIL_RESULTS
        self.cases: dict[str, dict[str, Any]] = {}
        # Numbered as first seen (a cell's key); the header lists them in display order.
        self.columns: dict[str, dict[str, Any]] = {}
        self.overview = Overview()
        self.summary = Summary()
        self.messages = _Strings()
        self._group: list[tuple[int, Mapping[str, Any]]] = []  # the current case's records, by column number
        self._missing: list[str] = []  # CASE_FIELDS its records have not given yet
        self._directory = directory
        self._rows_path: Path | None = None  # (no file before the first row: a forked part makes its own)
        self._rows: IO[str] | None = None
        self._first_row = True
        self._emitted = False

    def add(self, record: Mapping[str, Any]) -> None:
        if not self._group or record["case"] != self._group[0][1]["case"]:
            if self._group and record["case"] < self._group[0][1]["case"]:  # (cases come in order, each once)
                raise OutOfOrder(f"records out of case order at {record['case']!r}: sort them first (sort_records)")
            if self._group:
                self._write_group()
            self.cases[record["case"]] = {"id": record["case"]}
            self._missing = list(CASE_FIELDS)
        key = _column_key(record)
        column = self.columns.get(key)
        if column is None:
            column = self.columns[key] = {**_column(record), "n": len(self.columns)}
        self._group.append((column["n"], record))
        if self._missing:  # a skipped record lacks hashes: take them from any record that has them
            case = self.cases[record["case"]]
            for name in self._missing:
                if record.get(name) is not None:
                    case[name] = record[name]
            self._missing = [name for name in self._missing if case.get(name) in (None, "")]
        self.overview.add(record)
        self.summary.add(record)

    def _write_group(self) -> None:
        self._write_rows(_rows(self._group, self.messages, self.brief))
        self._group = []

    def _write_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        assert not self._emitted, "the report's rows are already written"
        if self._rows is None:
            descriptor, name = tempfile.mkstemp(
                dir=self._directory or scratch_directory(), prefix=".report-rows-", suffix=".json"
            )
            self._rows_path = Path(name)
            self._rows = os.fdopen(descriptor, "w", encoding="utf-8")
        for row in rows:
            self._rows.write(("" if self._first_row else ",") + compact_json(row))
            self._first_row = False

    def __getstate__(self) -> dict[str, Any]:
        """A part's report, for the process that merges it: its rows stay in its file, flushed."""
        if self._rows is not None:
            self._rows.flush()
        return {**self.__dict__, "_rows": None}

    def merge(self, later: ReportData) -> None:
        """The report of the records after this one's, made in another process (a part of a pass,
        conformance/record_passes.py), as if this one had been handed them: `later`'s columns and
        messages take this one's numbers where they are already numbered, and the next ones in
        the order `later` numbered them, as one pass would have."""
        self.overview.merge(later.overview)
        self.summary.merge(later.summary)
        if not later.cases:
            return
        if self._group:  # (its messages are numbered before any of `later`'s)
            assert next(iter(later.cases)) > self._group[0][1]["case"], "a part's cases follow the cases before it"
            self._write_group()
        numbers: dict[int, int] = {}
        for column in sorted(later.columns.values(), key=lambda c: int(c["n"])):
            mine = self.columns.get(column["key"])
            if mine is None:
                mine = self.columns[column["key"]] = {**column, "n": len(self.columns)}
            numbers[column["n"]] = mine["n"]
        messages = [self.messages(text) for text in later.messages.table]
        if later._rows_path is not None:
            self._write_rows(_renumbered(_written_rows(later._rows_path), numbers, messages))
            later._rows_path.unlink(missing_ok=True)
        self.cases.update(later.cases)
        self._group = [(numbers[column], record) for column, record in later._group]
        self._missing = later._missing

    def emit(self, document: Mapping[str, Any], emit: Callable[[str], object]) -> None:
        """The data model as JSON text, in pieces: the header (from `document`: its runs,
        expectations, contracts and conflicts), the rows, the strings. Once: the rows are moved out."""
        if self._group:
            self._write_group()
        assert not self._emitted, "the report's data can be emitted once"
        self._emitted = True
        if self._rows is not None:
            self._rows.close()
            self._rows = None
        header = {
            "title": document.get("title") or "Dilated convolution conformance",
            "created": document.get("created"),
            "runs": runs_of(dict(document)),
            "summary": self.summary.as_dict(),  # from the records: a hand-made file may lack it
            "brief": {"limit": FULL_DETAIL_RESULTS, "outcomes": sorted(_BRIEF_OUTCOMES)} if self.brief else None,
            "overview": self.overview.as_dict(),
            "case_errors": document.get("case_errors", []),
            "expectations": document.get("expectations", []),
            "contracts": document.get("contracts", []),
            "conflicts": document.get("conflicts", []),
            "history": document.get("history"),  # (conformance/history.py: since when failing checks fail)
            "cases": self.cases,
            "columns": sorted(self.columns.values(), key=lambda c: tuple(c[k] for k in _COLUMN_ORDER)),
        }
        opening = json.dumps(header, separators=(",", ":"), allow_nan=False)
        emit(opening[:-1] + ',"rows":[')
        if self._rows_path is not None:
            try:
                with self._rows_path.open(encoding="utf-8") as rows:
                    while piece := rows.read(1 << 20):
                        emit(piece)
            finally:
                self._rows_path.unlink(missing_ok=True)
        emit('],"strings":' + json.dumps(self.messages.table, separators=(",", ":")) + "}")

    def discard(self) -> None:
        if self._rows is not None:
            self._rows.close()
            self._rows = None
        if self._rows_path is not None:
            self._rows_path.unlink(missing_ok=True)

    def write(self, document: Mapping[str, Any], path: Path) -> None:
        """The report file: atomically, the data compressed as it is emitted."""
        atomic_write(path, lambda handle: _render_to(handle, lambda emit: self.emit(document, emit)))


class OutOfOrder(ValueError):
    pass


def report_data(document: Mapping[str, Any]) -> ReportData:
    """The data model of a document's records: one pass over them. A results file is in case
    order; a hand-made list, or a file found out of order, is sorted on disk first."""
    records = document["results"]
    if isinstance(records, RecordFile):
        data = ReportData(len(records))
        try:
            return _fed(data, records)
        except OutOfOrder:
            data.discard()
    ordered = sort_records(records)
    try:
        return _fed(ReportData(len(ordered)), ordered)
    finally:
        ordered.discard()


def _fed(data: ReportData, records: Iterable[Mapping[str, Any]]) -> ReportData:
    for record in records:
        data.add(record)
    return data


def write_data(document: dict[str, Any], emit: Callable[[str], object]) -> None:
    """The report's data model of `document` as JSON text, in pieces (`ReportData.emit`)."""
    report_data(document).emit(document, emit)


def _rows(group: list[tuple[int, Mapping[str, Any]]], messages: _Strings, brief: bool) -> list[dict[str, Any]]:
    """One case's rows, by dtype, from its records and their columns' numbers. `brief`: conformant
    and not-run cells without their details."""
    rows: dict[str, dict[str, Any]] = {}
    tensors: dict[str, _Strings] = {}
    for column, record in group:
        row = rows.get(record["dtype"])
        if row is None:
            row = rows[record["dtype"]] = {"case": record["case"], "dtype": record["dtype"], "cells": {}}
        if brief and record["outcome"] in _BRIEF_OUTCOMES:
            row["cells"][column] = _brief_cell(record, messages)
            continue
        cell = {
            "o": record["outcome"],
            "r": record.get("error_ratio"),
            "x": record.get("exact", False),
            "m": messages(record.get("message")),
        }
        data_part, call_part = _split_reproduction(record.get("reproduction") or "")
        cell["rp"] = [tensors.setdefault(record["dtype"], _Strings())(data_part), call_part]
        for short, name in _CELL_FIELDS:
            if record.get(name) is not None:
                cell[short] = record[name]
        row["cells"][column] = cell
    for dtype, row in rows.items():
        row["rd"] = tensors[dtype].table if dtype in tensors else []
    return [rows[dtype] for dtype in sorted(rows)]


ROWS_PIECE = 1 << 20  # characters of a rows file read at a time


def _written_rows(path: Path) -> Iterator[dict[str, Any]]:
    """A rows file's rows (compact JSON objects, comma-separated), read one at a time: a part's
    rows are as many as its records' cases and dtypes."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8") as handle:
        buffer, position = "", 0
        while True:
            piece = handle.read(ROWS_PIECE)
            buffer, position = buffer[position:] + piece, 0
            while True:
                while position < len(buffer) and buffer[position] == ",":
                    position += 1
                try:
                    row, position = decoder.raw_decode(buffer, position)
                except ValueError:  # (the piece ended inside a row, or there is none left)
                    break
                yield row
            if not piece:
                assert position == len(buffer), f"{path}: not rows at {buffer[position : position + 80]!r}"
                return


def _renumbered(
    rows: Iterable[dict[str, Any]], columns: Mapping[int, int], messages: Sequence[int]
) -> Iterator[dict[str, Any]]:
    """A part's rows with their cells' columns and messages numbered as the merging report numbers them."""
    for row in rows:
        cells = {}
        for column, cell in row["cells"].items():
            if "m" in cell:
                cell["m"] = messages[cell["m"]]
            cells[columns[int(column)]] = cell
        row["cells"] = cells
        yield row


def _brief_cell(record: Mapping[str, Any], messages: _Strings) -> dict[str, Any]:
    """A conformant or not-run cell of a very large report: what the matrix shows, no more. Figures
    keep 4 significant digits (the page shows 3; the results file keeps them whole) and empty
    fields are left out: parsing the data is most of what opening a 10^6-check report costs."""
    cell: dict[str, Any] = {"o": record["outcome"]}
    for short, name in (("r", "error_ratio"), ("t", "duration_s")):
        if isinstance(value := record.get(name), (int, float)):
            cell[short] = float(f"{value:.4g}")
    if record.get("exact"):
        cell["x"] = True
    if record.get("message"):
        cell["m"] = messages(record["message"])
    if record.get("run") is not None:
        cell["run"] = record["run"]
    return cell


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
        # wbits 31: a gzip member. Level 6, zlib's default: on the large tier's 34 MB of data, half
        # level 9's time (0.6 against 1.25 s, at the run's end) for a page 3% larger.
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
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


def _render_to(handle: IO[str], write_data_to: Callable[[Callable[[str], object]], None]) -> None:
    template = (ASSETS / "report.html").read_text(encoding="utf-8")
    # Split first, then join: no inserted text is ever searched for the next placeholder.
    head, rest = template.split("/*STYLE*/")
    middle, rest = rest.split("DATA_BASE64")
    before_script, tail = rest.split("/*SCRIPT*/")
    handle.write(head + (ASSETS / "report.css").read_text(encoding="utf-8") + middle)
    encoder = _Base64Gzip(handle)
    write_data_to(encoder.write)
    encoder.close()
    script = (ASSETS / "report.js").read_text(encoding="utf-8").replace("</script", "<\\/script")
    handle.write(before_script + script + tail)


def render_to(document: dict[str, Any], handle: IO[str]) -> None:
    _render_to(handle, lambda emit: write_data(document, emit))


def render(document: dict[str, Any]) -> str:
    buffer = io.StringIO()
    render_to(document, buffer)
    return buffer.getvalue()


def write_report(document: dict[str, Any], path: Path) -> None:
    """The report of a document: one pass over its records, then the file, atomically."""
    report_data(document).write(document, path)


def embedded_data(html: str) -> dict[str, Any]:
    """The data model inside a rendered report (what the page's script draws): for tests and tools."""
    start = html.index('id="report-data">') + len('id="report-data">')
    data: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(html[start : html.index("</script>", start)])))
    return data
