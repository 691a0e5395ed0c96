"""Warnings a framework raises during a check become part of that check's record.

pytest would list such a warning once per check (the same TensorFlow notice 30 times); as data, the
terminal summary and the report show it once per target, with how many checks saw it, and each
record still says what it saw. Warnings from the harness's own code are issued again unchanged, so
a harness bug is not hidden in the data. The adapters count as the framework's side: a warning from
native code (TORCH_WARN, a C++ deprecation) is attributed to the Python frame that called it, which
is an adapter's.
"""

from __future__ import annotations

import sysconfig
import warnings
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parents[1]
_ADAPTERS = _PACKAGE / "adapters"
_PREFIXES = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}, key=len, reverse=True)


def _where(filename: str, lineno: int) -> str:
    """The place, relative to site-packages (the same on every machine)."""
    for prefix in _PREFIXES:
        if filename.startswith(prefix):
            return f"{filename[len(prefix) :].lstrip('/')}:{lineno}"
    return f"{filename}:{lineno}"


class recorded:  # (lower case: it is used as a function was, `with framework_warnings.recorded() as seen:`)
    """The distinct framework warnings (category, place, first message) raised inside the block. A
    class, not a generator: every check enters one, and a generator's context manager costs as much again."""

    __slots__ = ("catching", "caught", "found")

    def __init__(self) -> None:
        self.catching = warnings.catch_warnings(record=True)  # the filters in force (pytest's, the config's) apply
        self.found: list[dict[str, Any]] = []

    def __enter__(self) -> list[dict[str, Any]]:
        self.caught: list[warnings.WarningMessage] = self.catching.__enter__()
        return self.found

    def __exit__(self, *exc_info: Any) -> None:
        try:
            _sort(self.caught, self.found)  # (inside the block still, as the harness's own are issued again)
        finally:
            self.catching.__exit__(*exc_info)


def _sort(caught: list[warnings.WarningMessage], found: list[dict[str, Any]]) -> None:
    seen: set[tuple[str, str]] = set()
    for warning in caught:
        place = Path(warning.filename).resolve()
        if place.is_relative_to(_PACKAGE) and not place.is_relative_to(_ADAPTERS):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
            continue
        entry = {
            "category": warning.category.__name__,
            "where": _where(warning.filename, warning.lineno),
            "message": str(warning.message).split("\n", 1)[0][:300],
        }
        if (entry["category"], entry["where"]) not in seen:
            seen.add((entry["category"], entry["where"]))
            found.append(entry)
