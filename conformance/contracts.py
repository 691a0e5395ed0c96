"""Accumulation contracts (`cases/contracts.toml`): what a framework keeps while it sums.

The case dtype's own bound assumes the worst the format allows, every partial sum rounded in the
case dtype. The frameworks here do better for float16 and bfloat16: they sum in float32 and round
once. A contract states that per target glob, quantity, device, precision mode and dtype, with its
evidence (the framework's documentation or source, and the worst ratio measured over the corpus);
`compare` judges each value against it after the dtype's bound. A value within the dtype's bound but
beyond the contract's is the outcome `contract`: the framework no longer keeps what it documents,
e.g. a build that starts summing float16 taps in float16.

The first entry that matches a check is its contract. An entry holds for the "strict" precision mode
unless it says `precision = "defaults"`; a float32 check judged by TF32's bound has none (TF32 is a
model of its own).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from conformance.cases import CaseError, strict_validator
from conformance.cases.entries import read_entries
from conformance.dtypes import FloatFormat, float_format
from conformance.records import observed

SCHEMA_PATH = Path(__file__).with_name("schema") / "contracts.schema.json"
FILE_NAME = "contracts.toml"
SUITE_CONTRACTS = Path(__file__).resolve().parent.parent / "cases" / FILE_NAME


@dataclass(frozen=True)
class Contract:
    id: str
    file: str
    line: int | None
    targets: tuple[str, ...]
    dtypes: tuple[str, ...]
    accumulation: str
    statement: str
    evidence: tuple[tuple[str, str], ...]  # (link, what it says)
    measured: dict[str, Any]
    quantities: tuple[str, ...] = ()
    device: str | None = None
    precision: str = "strict"

    def matches(self, target_id: str, quantity: str, device: str, precision: str, dtype: str) -> bool:
        return (
            dtype in self.dtypes
            and any(fnmatch.fnmatchcase(target_id, glob) for glob in self.targets)
            and (not self.quantities or quantity in self.quantities)
            and (self.device is None or device == self.device)
            and precision == self.precision
        )

    @property
    def accumulation_format(self) -> FloatFormat:
        return float_format(self.accumulation)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "statement": self.statement,
            "accumulation": self.accumulation,
            "evidence": [{"link": link, "says": says} for link, says in self.evidence],
            "measured": self.measured,
        }


@dataclass
class Contracts:
    entries: list[Contract]
    errors: list[CaseError]

    def find(self, target_id: str, quantity: str, device: str, precision: str, dtype: str) -> Contract | None:
        return next((c for c in self.entries if c.matches(target_id, quantity, device, precision, dtype)), None)


NONE = Contracts([], [])


@cache
def _validator() -> Any:
    return strict_validator(SCHEMA_PATH)


def load(path: Path, label: str | None = None) -> Contracts:
    """Every valid contract, and an error naming file, entry and field for each invalid one."""
    label = label or str(path)
    read = read_entries(path, label, "contract", _validator(), "accumulation contracts")
    entries = []
    for _, raw in read.valid:
        entries.append(
            Contract(
                id=raw["id"],
                file=label,
                line=read.lines.get(raw["id"]),
                targets=tuple(raw["targets"]),
                dtypes=tuple(raw["dtypes"]),
                accumulation=raw["accumulation"],
                statement=raw["statement"],
                evidence=tuple((e["link"], e["says"]) for e in raw["evidence"]),
                measured=dict(raw["measured"]),
                quantities=tuple(raw.get("quantities", ())),
                device=raw.get("device"),
                precision=raw.get("precision", "strict"),
            )
        )
    return Contracts(entries, read.errors)


@cache
def suite_contracts() -> Contracts:
    """The suite's own contracts, for callers outside a pytest run (the CLI's fuzzing, the tests)."""
    return load(SUITE_CONTRACTS, f"cases/{FILE_NAME}")


def unmatched(contracts: Iterable[Contract], target_ids: list[str]) -> list[CaseError]:
    """Target globs that match no target: a typo, or a contract for a removed target."""
    return [
        CaseError(c.file, f"{glob!r} matches no known target", c.id, "targets", c.line)
        for c in contracts
        for glob in c.targets
        if not any(fnmatch.fnmatchcase(t, glob) for t in target_ids)
    ]


class Tally:
    """Each contract as stated (`Contract.summary()`), with what the run saw under `run`: the checks
    it judged, how many broke it (known divergences included) and the worst ratio per dtype. Fed
    one record at a time."""

    def __init__(self, stated: Iterable[Mapping[str, Any]]) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        for summary in stated:
            self.rows.setdefault(summary["id"], {**summary, "run": {"checks": 0, "broken": 0, "worst_ratio": {}}})

    def add(self, record: Mapping[str, Any]) -> None:
        judged = (record.get("bounds") or {}).get("contract")
        if not judged or judged.get("id") not in self.rows:
            return
        seen = self.rows[judged["id"]]["run"]
        seen["checks"] += 1
        seen["broken"] += observed(record) == "contract"
        worst = seen["worst_ratio"]
        worst[record["dtype"]] = max(worst.get(record["dtype"], 0.0), judged["ratio"])

    def merge(self, later: Tally) -> None:
        """What `later` saw (the same contracts, the records after this one's)."""
        for contract, row in later.rows.items():
            seen, theirs = self.rows[contract]["run"], row["run"]
            seen["checks"] += theirs["checks"]
            seen["broken"] += theirs["broken"]
            for dtype, ratio in theirs["worst_ratio"].items():
                seen["worst_ratio"][dtype] = max(seen["worst_ratio"].get(dtype, 0.0), ratio)

    def result(self) -> list[dict[str, Any]]:
        return list(self.rows.values())


def tally(stated: Iterable[Mapping[str, Any]], records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`Tally` over `records`."""
    counted = Tally(stated)
    for record in records:
        counted.add(record)
    return counted.result()
