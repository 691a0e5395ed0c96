"""Where things are in a TOML file's text (`tomllib` gives no positions), so that every error can
name the line of the offending key."""

from __future__ import annotations

import re
from typing import Any


def id_lines(text: str) -> dict[str, int]:
    """Line of each `id = "..."` in the file, so errors can point at the case."""
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        found = re.match(r"""\s*id\s*=\s*["']([^"']*)["']""", line)
        if found:
            lines.setdefault(found.group(1), number)
    return lines


# A line that is only a table header: `[name]`, `[[name]]`, `[a.b]`; not an array continuation line.
TABLE_HEADER = re.compile(r"""\s*\[\[?\s*[A-Za-z_"'][\w."' -]*\]\]?\s*(#.*)?$""")


class SourceLines:
    """Where things are in a TOML file's text, since `tomllib` gives no positions.

    `[[table]]` blocks are numbered in file order, as they appear in the parsed array, so an error
    at `case[3].rate` points at the `rate = ...` line of the fourth `[[case]]`, not only at the case.
    """

    def __init__(self, text: str, table: str) -> None:
        self.lines = text.splitlines()
        header = re.compile(r"\s*\[\[\s*" + re.escape(table) + r"\s*\]\]\s*(#.*)?$")
        any_header = TABLE_HEADER
        starts = [n for n, line in enumerate(self.lines) if header.match(line)]
        self.blocks: list[tuple[int, int]] = []
        for start in starts:
            end = start + 1
            while end < len(self.lines) and not (
                any_header.match(self.lines[end]) and not self._is_subtable(self.lines[end], table)
            ):
                end += 1
            self.blocks.append((start, end))
        self.table = table

    @staticmethod
    def _is_subtable(line: str, table: str) -> bool:
        return bool(re.match(r"\s*\[\s*" + re.escape(table) + r"\.", line))

    def _find_key(self, start: int, end: int, key: str) -> int | None:
        pattern = re.compile(r"""\s*["']?""" + re.escape(key) + r"""["']?\s*[=.]""")  # also `expect.kind =`
        subtable = re.compile(r"\s*\[\s*" + re.escape(self.table) + r"\." + re.escape(key) + r"\s*\]")
        for number in range(start, end):
            if pattern.match(self.lines[number]) or subtable.match(self.lines[number]):
                return number + 1
        return None

    def entry_line(self, index: int, path: list[Any]) -> int | None:
        """The line of the offending key in entry `index` (or of its `id`, or its header)."""
        if index >= len(self.blocks):
            return None
        start, end = self.blocks[index]
        if len(path) >= 2:  # a key inside a sub-table such as `[sweep.axes]`
            header = re.compile(r"\s*\[\s*" + re.escape(self.table) + r"\." + re.escape(str(path[0])) + r"\s*\]")
            sub_start = next((n for n in range(start, end) if header.match(self.lines[n])), None)
            if sub_start is not None:
                sub_end = next((n for n in range(sub_start + 1, end) if TABLE_HEADER.match(self.lines[n])), end)
                found = self._find_key(sub_start + 1, sub_end, str(path[1]))
                if found:
                    return found
        for key in ([str(path[0])] if path else []) + ["id"]:
            found = self._find_key(start, end, key)
            if found:
                return found
        return start + 1

    def section_line(self, section: str, path: list[Any]) -> int | None:
        """The line of `key` inside a plain `[section]` table (e.g. `[defaults]`)."""
        header = re.compile(r"\s*\[\s*" + re.escape(section) + r"\s*\]")
        for number, line in enumerate(self.lines):
            if header.match(line):
                end = number + 1
                while end < len(self.lines) and not TABLE_HEADER.match(self.lines[end]):
                    end += 1
                return (self._find_key(number + 1, end, str(path[0])) if path else None) or number + 1
        return None

    def top_level_line(self, key: str) -> int | None:
        """`key = ...` before the first table, or a `[key]` / `[[key]]` table header anywhere."""
        first_header = next((n for n, line in enumerate(self.lines) if TABLE_HEADER.match(line)), len(self.lines))
        found = self._find_key(0, first_header, key)
        if found:
            return found
        header = re.compile(r"\s*\[\[?\s*" + re.escape(key) + r"\s*\]\]?")
        return next((n + 1 for n, line in enumerate(self.lines) if header.match(line)), None)
