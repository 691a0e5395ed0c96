"""The HTML conformance report: one self-contained file rendered from a results (or merged) JSON document.

The page carries its data as gzip + base64 inside a `<script type="application/octet-stream">`
element and draws everything in the browser with `textContent` (never `innerHTML` on data), so
no case-supplied text can become markup, and a 20,000-result report stays a few megabytes.
The table of cases is virtualised: only the rows on screen exist in the DOM.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

from conformance import frameworks
from conformance.overview import Overview
from conformance.results import atomic_write_text, runs_of, summarize

ASSETS = Path(__file__).with_name("assets")
OVERVIEW_FAILURES = 200  # failing checks listed on the first screen's list (the matrix has them all)


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


def _version_text(record: dict[str, Any]) -> str:
    """The framework's version, and a front-end's backend beside it: "3.15.1 (jax 0.10.2)"."""
    version = str(record.get("framework_version") or "")
    framework = frameworks.get(record["framework"])
    if framework is not None and framework.backend and record.get("backend_version"):
        version += f" ({framework.backend} {record['backend_version']})"
    return version


def pack(document: dict[str, Any]) -> dict[str, Any]:
    """The report's data model: cases, columns (target x framework version), rows (case x dtype), cells."""
    strings = _Strings()
    runs = runs_of(document)
    cases: dict[str, dict[str, Any]] = {}
    columns: dict[tuple[str, str], dict[str, Any]] = {}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in document["results"]:
        case = cases.setdefault(record["case"], {"id": record["case"]})
        for name in CASE_FIELDS:  # a skipped record lacks hashes: take them from any record that has them
            if case.get(name) in (None, "") and record.get(name) is not None:
                case[name] = record[name]
        column_key = (record["target"], record.get("framework_version") or "")
        column = columns.setdefault(
            column_key,
            {
                "key": f"{column_key[0]}@{column_key[1]}",  # the cells' key (the version shown may say more)
                "target": record["target"],
                "framework": record["framework"],
                "op": record["op"],
                "variant": record.get("variant") or "",  # an execution mode or oracle (older results: none)
                "version": _version_text(record),
                "device": record["device"],
                "precision": record["precision"],
            },
        )
        row = rows.setdefault((record["case"], record["dtype"]), {"case": record["case"], "dtype": record["dtype"]})
        data_part, call_part = _split_reproduction(record.get("reproduction") or "")
        cell = {
            "o": record["outcome"],
            "r": record.get("error_ratio"),
            "x": record.get("exact", False),
            "m": strings(record.get("message")),
            "rp": [strings(data_part), strings(call_part)],
        }
        for short, name in (
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
        ):
            if record.get(name) is not None:
                cell[short] = record[name]
        row.setdefault("cells", {})[f"{column_key[0]}@{column_key[1]}"] = cell
    order = ("framework", "op", "variant", "device", "precision", "version")
    ordered_columns = sorted(columns.values(), key=lambda c: tuple(c[k] for k in order))
    for number, column in enumerate(ordered_columns):
        column["n"] = number
    column_number = {c["key"]: c["n"] for c in ordered_columns}
    packed_rows = []
    for row in sorted(rows.values(), key=lambda r: (cases[r["case"]].get("case_file", ""), r["case"], r["dtype"])):
        row["cells"] = {column_number[k]: v for k, v in row["cells"].items()}
        packed_rows.append(row)
    return {
        "title": document.get("title") or "Dilated convolution conformance",
        "created": document.get("created"),
        "runs": runs,
        "summary": summarize(document["results"]),  # from the records: a hand-made file may lack it
        "overview": Overview(failure_limit=OVERVIEW_FAILURES).add_all(document["results"]).as_dict(),
        "case_errors": document.get("case_errors", []),
        "expectations": document.get("expectations", []),
        "contracts": document.get("contracts", []),
        "conflicts": document.get("conflicts", []),
        "cases": cases,
        "columns": ordered_columns,
        "rows": packed_rows,
        "strings": strings.table,
    }


def _encode(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


def render(document: dict[str, Any]) -> str:
    template = (ASSETS / "report.html").read_text(encoding="utf-8")
    # Split first, then join: no inserted text is ever searched for the next placeholder.
    head, rest = template.split("/*STYLE*/")
    middle, rest = rest.split("DATA_BASE64")
    before_script, tail = rest.split("/*SCRIPT*/")
    return "".join(
        (
            head,
            (ASSETS / "report.css").read_text(encoding="utf-8"),
            middle,
            _encode(pack(document)),
            before_script,
            (ASSETS / "report.js").read_text(encoding="utf-8").replace("</script", "<\\/script"),
            tail,
        )
    )


def write_report(document: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, render(document))


def embedded_data(html: str) -> dict[str, Any]:
    """The data model inside a rendered report (what the page's script draws): for tests and tools."""
    start = html.index('id="report-data">') + len('id="report-data">')
    data: dict[str, Any] = json.loads(gzip.decompress(base64.b64decode(html[start : html.index("</script>", start)])))
    return data
