"""Property-based exploration: random valid convolutions through every selected target.

Hypothesis draws configurations (the forward or the transposed op, sizes, kernels, per-axis rates
and strides, every padding form, output_padding, groups, dtypes, seeded data) and looks for one on
which a target of that op diverges: an outcome that is neither conformant nor excused by the
expectations file. It then shrinks that configuration while
the *same* target keeps diverging the *same* way, and the minimal one is written out as a case
file that can be committed as it is.
"""

from __future__ import annotations

import fnmatch
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance import expectations, runner
from conformance.adapters import QUANTITIES, Target
from conformance.cases import Case, CaseFileError, build_case
from conformance.compare import CONFORMANT, NOT_RUN, Outcome
from conformance.contracts import NONE, Contracts
from conformance.records import Record
from conformance.results import atomic_write_text
from conformance.semantics import CONV, CONV_TRANSPOSE, output_padding_limit

EXCUSED = CONFORMANT | NOT_RUN | {Outcome.XFAIL}


def configurations(rank: int = 2) -> Any:
    """A Hypothesis strategy of raw case tables (as a case file would state them) of `rank` spatial
    axes (2 by default: the frameworks' targets of other ranks are the next ones to come)."""
    from hypothesis import strategies as st

    side = st.integers(1, 12)
    small = st.integers(1, 4)

    @st.composite
    def draw(draw: Any) -> dict[str, Any]:
        groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
        channels = groups * draw(st.integers(1, 3))
        out_channels = groups * draw(st.integers(1, 2))
        kernel = [draw(st.integers(1, 5)) for _ in range(rank)]
        padding = draw(
            st.one_of(
                st.sampled_from(["SAME", "VALID"]),
                st.integers(0, 3),
                st.lists(st.lists(st.integers(0, 4), min_size=2, max_size=2), min_size=rank, max_size=rank),
            )
        )
        op = draw(st.sampled_from([CONV, CONV, CONV_TRANSPOSE]))
        rate = [draw(small) for _ in range(rank)]
        stride = [draw(st.integers(1, 3)) for _ in range(rank)]
        # The forward op's kernel either way: (*k, C_in / g, C_out), or (*k, C_out / g, C_in).
        kernel_channels = [channels // groups, out_channels] if op == CONV else [out_channels // groups, channels]
        extra: dict[str, Any] = {}
        if op == CONV_TRANSPOSE:
            extra["op"] = op
            if not isinstance(padding, str):  # (SAME and VALID fix the output size)
                limits = [output_padding_limit(s, r) for s, r in zip(stride, rate, strict=True)]
                extra["output_padding"] = [draw(st.integers(0, limit - 1)) for limit in limits]
        return {
            "id": "fuzz",
            "dtypes": [draw(st.sampled_from(["float32", "float64", "float16", "bfloat16"]))],
            "input": {
                "generator": "normal",
                "seed": draw(st.integers(0, 2**16)),
                "shape": [draw(st.integers(1, 2)), *(draw(side) for _ in range(rank)), channels],
            },
            "kernel": {
                "generator": "normal",
                "seed": draw(st.integers(0, 2**16)),
                "shape": [*kernel, *kernel_channels],
            },
            "rate": rate,
            "stride": stride,
            "padding": padding,
            "groups": groups,
            **extra,
        }

    return draw()


@dataclass
class Divergence:
    raw: dict[str, Any]
    record: Record


@dataclass
class FuzzResult:
    examples: int
    divergence: Divergence | None = None
    case_file: Path | None = None
    checked: int = 0  # configurations that were valid cases


def _case(raw: Mapping[str, Any]) -> Case | None:
    try:
        return build_case("fuzz", "fuzz", raw, {}, None)
    except CaseFileError:  # e.g. a padded input beyond the size limit: not a configuration
        return None


def explore(
    examples: int,
    targets: list[Target],
    known: list[expectations.Expectation],
    out_dir: Path,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    contracts: Contracts = NONE,
) -> FuzzResult:
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    result = FuzzResult(examples)
    pinned: list[tuple[str, str]] = []  # (target, outcome) of the first divergence: shrink towards it only

    def diverges(raw: dict[str, Any]) -> bool:
        case = _case(raw)
        if case is None:
            return False
        result.checked += 1
        for target in targets:
            if target.adapter.mismatch(case.op, case.rank) or (pinned and target.id != pinned[0][0]):
                continue
            record = runner.run_check(case, target, case.dtypes[0], contracts=contracts)
            expectations.apply(record, known)
            outcome = record["outcome"]
            if outcome in EXCUSED:
                continue
            if pinned and outcome != pinned[0][1]:
                continue
            if not pinned:
                pinned.append((target.id, outcome))
                if progress:
                    progress(f"fuzz: {target.id} gives {outcome}; shrinking")
            result.divergence = Divergence(raw, record)
            return True
        return False

    config = settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    try:
        minimal = find(configurations(), diverges, settings=config, random=random.Random(seed))
    except NoSuchExample:
        return result
    diverges(minimal)  # leave the minimal example's record in the result
    result.case_file = write_case_file(minimal, result.divergence.record, out_dir)  # type: ignore[union-attr]
    return result


def write_case_file(raw: Mapping[str, Any], record: Mapping[str, Any], out_dir: Path) -> Path:
    """The minimal divergent configuration as a case file, named after its content."""
    digest = hashlib.sha256(repr(sorted(raw.items())).encode()).hexdigest()[:10]
    case_id = f"fuzz-{record['target'].replace('@', '-')}-{digest}"
    message = " ".join(str(record["message"]).split())[:300]
    summary = f"{record['target']}: {record['outcome']} ({message[:120]})"
    lines = [
        f"# Found by --conformance-fuzz: {record['target']} gave {record['outcome']} on {record['dtype']}.",
        f"# {message}",
        'description = "Minimal divergences found by property-based exploration."',
        "",
        "[[case]]",
        f'id = "{case_id}"',
        f"description = {_toml(summary)}",
    ]
    keys = ("op", "dtypes", "input", "kernel", "rate", "stride", "padding", "output_padding", "groups")
    lines += [f"{key} = {_toml(raw[key])}" for key in keys if key in raw]
    if record.get("quantity") in QUANTITIES:  # found in a gradient: the case must opt into it
        lines.append(f"derivatives = {QUANTITIES[record['quantity']]}")
    path = out_dir / f"{case_id}.toml"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return "[" + ", ".join(_toml(v) for v in value) + "]"


def select(targets: list[Target], patterns: list[str]) -> list[Target]:
    """CPU targets matching any glob (all CPU targets when none is given)."""
    cpu = [t for t in targets if t.device == "cpu"]
    return [t for t in cpu if not patterns or any(fnmatch.fnmatchcase(t.id, p) for p in patterns)]
