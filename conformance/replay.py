"""Known divergences applied again to recorded results, as the machine that produced them saw them.

A results file keeps what each target did (`observed_outcome` beside an xfail or xpass); replaying
it through another expectations file tells, without running anything, what that file would excuse
and what would still fail. An entry edited to name the facts that decide a behaviour (oneDNN on,
the dtypes oneDNN takes, the ISA it runs) must still excuse every record a machine produced:
`tests/test_evidence.py` replays the records of an AVX-512 machine's red run this way.

A record written before a runtime fact existed has only the facts its process reported then; the
others are derived from the machine it ran on (`machine.predicted_facts`: the frameworks' own
rules, from the CPU's flags and the run's variables), which the results' environment records as
`cpu_features` and an evidence file states on its first line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conformance import expectations, frameworks, machine
from conformance.cases import Case
from conformance.compare import NOT_RUN, Outcome
from conformance.overview import bucket_of

# An xpass record's message names the conformant outcome it had: "... matched this conformant check (pass): ..."
_CONFORMANT_IN_MESSAGE = re.compile(r"matched this conformant check \(([a-z-]+)\)")
_NO_FACTS = NOT_RUN | {Outcome.CRASH, Outcome.TIMEOUT}  # the process that knew the facts never answered


@dataclass(frozen=True)
class Machine:
    """Where the records were made: its CPU, the kernel-choosing variables in effect, its packages."""

    cpu: machine.Cpu
    environ: Mapping[str, str] = field(default_factory=dict)
    packages: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, environment: Mapping[str, Any], fallback: machine.Cpu | None = None) -> Machine:
        """From a results file's environment block; the CPU from `cpu_features` (or `cpu_flags`,
        an evidence file's spelling), else `fallback` (results written before either existed)."""
        features = environment.get("cpu_features") or {}
        flags = features.get("flags") or environment.get("cpu_flags")
        cpu = machine.Cpu.parse(flags) if flags else fallback
        if cpu is None:
            raise ValueError("the results do not say which CPU made them (no cpu_features): give the CPU's flags")
        environ = dict(features.get("variables") or {})
        return cls(cpu, environ, dict(environment.get("packages") or {}))


def framework_of(record: Mapping[str, Any]) -> str:
    return str(record.get("framework") or record["target"].split(".", 1)[0])


def observed_outcome(record: Mapping[str, Any]) -> str:
    """What the target did before known divergences relabelled it."""
    if record.get("observed_outcome"):
        return str(record["observed_outcome"])
    if record["outcome"] == Outcome.XPASS:  # (evidence files keep the message, not the field)
        found = _CONFORMANT_IN_MESSAGE.search(record.get("message") or "")
        return found.group(1) if found else Outcome.PASS.value
    return str(record["outcome"])


def complete(record: Mapping[str, Any], case: Case | None, where: Machine) -> dict[str, Any]:
    """The record with the fields matching reads that an abridged record (an evidence file's) left
    out: the case's op and expectation, the framework and its version on that machine."""
    full = dict(record)
    framework = framework_of(record)
    full.setdefault("framework", framework)
    if "framework_version" not in full:
        known = frameworks.get(framework)
        distributions = known.distributions if known is not None else (framework,)
        full["framework_version"] = next((where.packages[d] for d in distributions if d in where.packages), None)
    if case is not None:
        full.setdefault("operation", case.op)
        full.setdefault("expect", "no-valid-output" if case.expects_no_output else case.expect_kind)
        output_padding = getattr(case.geometry, "output_padding", None)
        if output_padding is not None:
            full.setdefault("output_padding", list(output_padding))
    return full


def rejudge(
    record: Mapping[str, Any],
    entries: list[expectations.Expectation],
    where: Machine,
    case: Case | None = None,
) -> dict[str, Any]:
    """The record as `entries` judge what its target did, with the facts of the process that made it:
    its own, and those `where` implies that it lacks."""
    fresh = complete(record, case, where)
    for name in ("expectation", "observed_outcome"):
        fresh.pop(name, None)
    fresh["outcome"] = observed_outcome(record)
    if Outcome(fresh["outcome"]) not in _NO_FACTS:
        implied = machine.predicted_facts(fresh["framework"], where.cpu, where.environ)
        facts = {**implied, **(record.get("runtime") or {})}
        if facts:
            fresh["runtime"] = machine.check_facts(facts, fresh["dtype"])
    return expectations.apply(fresh, entries, environ=where.environ)  # type: ignore[arg-type, return-value]


def failing(record: Mapping[str, Any]) -> bool:
    """Whether the record fails a run: neither conformant, excused, nor a non-strict entry's pass."""
    return bucket_of(record) == "failing"


def read_evidence(lines: Iterable[str]) -> tuple[Machine, list[dict[str, Any]]]:
    """An evidence file: a `run` line (environment, framework_flags, cpu_flags, counts) and then one
    record per line, as a run that went red on some machine kept them."""
    header, *records = (json.loads(line) for line in lines if line.strip())
    if header.get("kind") != "run":
        raise ValueError("an evidence file opens with its run's line (kind = run)")
    environ = {
        name: str(value)
        for flags in (header.get("framework_flags") or {}).values()
        for name, value in (flags or {}).items()
        if name in machine.VARIABLES and value != "(unset)"
    }
    environment = {**header.get("environment", {}), "cpu_flags": header.get("cpu_flags")}
    where = Machine.of(environment)
    return Machine(where.cpu, environ, where.packages), records
