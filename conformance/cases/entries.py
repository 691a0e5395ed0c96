"""Reading a data file of `[[table]]` entries (known divergences, accumulation contracts): the TOML,
its schema, and an error naming file, entry and field for each invalid entry, the rest kept."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.cases.model import CaseError
from conformance.cases.positions import SourceLines, id_lines
from conformance.cases.schema_errors import explain_schema_error, field_path


@dataclass
class Entries:
    valid: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (index in the file, entry)
    errors: list[CaseError] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # entry id -> line
    source: SourceLines | None = None

    def line_of(self, index: int, path: list[Any]) -> int | None:
        return self.source.entry_line(index, path) if self.source else None


def read_entries(path: Path, label: str, table: str, validator: Any, what: str) -> Entries:
    """The schema-valid entries of `path`'s `[[table]]` array (none when the file is absent), each
    entry id once. A file that breaks the schema outside any entry keeps none."""
    if not path.exists():
        return Entries()
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return Entries(errors=[CaseError(label, f"cannot read {what}: {exc}")])
    found = document.get(table)
    raw_entries: list[Any] = found if isinstance(found, list) else []
    entries = Entries(lines=id_lines(text), source=SourceLines(text, table))
    bad: set[int] = set()
    for error in validator.iter_errors(document):
        message, parts = explain_schema_error(error)
        entry_id, line = None, None
        if len(parts) >= 2 and parts[0] == table and isinstance(parts[1], int):
            bad.add(parts[1])
            raw = raw_entries[parts[1]] if parts[1] < len(raw_entries) else {}
            entry_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else f"#{parts[1] + 1}"
            line = entries.line_of(parts[1], parts[2:])
            parts = parts[2:]
        entries.errors.append(CaseError(label, message, entry_id, field_path(parts) or None, line))
    if entries.errors and not bad:
        return Entries(errors=entries.errors)
    seen: set[str] = set()
    for index, raw in enumerate(raw_entries):
        if index in bad:
            continue
        if raw["id"] in seen:
            entries.errors.append(
                CaseError(label, f"duplicate {table} id", raw["id"], "id", entries.lines.get(raw["id"]))
            )
            continue
        seen.add(raw["id"])
        entries.valid.append((index, raw))
    return entries
