"""Sweeps: a declarative grid in a case file that expands to ordinary cases.

A `[[sweep]]` names axes (lists of values) and fixed settings; every combination that passes the
sweep's `where` constraints becomes one case, built exactly as if it had been written out, so
every loader rule and error applies to it. Ids are made from the values of the axes, not from
positions in the grid, so adding a value to an axis never renames or reseeds an existing case;
each case's data seed is derived from the sweep's seed and the case id, for the same reason.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from types import MappingProxyType
from typing import Any

from conformance.generators import RANDOM_GENERATORS
from conformance.semantics import (
    CONV,
    CONV_TRANSPOSE,
    FORMER_NAMES,
    OPERATIONS,
    PADDING_WORDS,
    AnyGeometry,
    TransposedGeometry,
    geometry,
    operation_named,
    per_axis,
    transposed_geometry,
)

# Geometry settings a sweep may vary (under `axes`) or fix (as a key of the sweep itself), in the
# order their parts appear in case ids.
SETTINGS = (
    "op",
    "batch",
    "size",
    "channels",
    "kernel_size",
    "out_channels",
    "rate",
    "stride",
    "padding",
    "output_padding",
    "groups",
)
DEFAULT_SETTINGS: dict[str, Any] = {
    "op": CONV,
    "batch": 1,
    "channels": 1,
    "out_channels": 1,
    "rate": 1,
    "stride": 1,
    "padding": "VALID",
    "output_padding": 0,
    "groups": 1,
}
REQUIRED_SETTINGS = ("size", "kernel_size")
# A grid this large is a typo, not a corpus (the opt-in tiers stay far below it).
MAX_COMBINATIONS = 2_000_000
_ID_PREFIX = {
    "batch": "n",
    "size": "in",
    "channels": "c",
    "kernel_size": "k",
    "out_channels": "o",
    "rate": "r",
    "stride": "s",
    "output_padding": "op",
    "groups": "g",
}


class SweepError(Exception):
    """A problem with the sweep itself (not with one expanded case): names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def id_part(setting: str, value: Any) -> str:
    """One readable id fragment: `k3`, `k3x5`, `r2x3`, `same`, `valid`, `p1`, `p0.2.1.0`."""
    if setting == "op":
        return str(value)
    if setting == "padding":
        if isinstance(value, str):
            return value.lower()
        if isinstance(value, int):
            return f"p{value}"
        return "p" + ".".join(str(p) for side in value for p in side)
    if isinstance(value, list):  # one value per spatial axis: written once when they agree
        text = str(value[0]) if len(set(value)) == 1 else "x".join(str(v) for v in value)
    else:
        text = str(value)
    return f"{_ID_PREFIX[setting]}{text}"


def derived_seed(sweep_seed: int, case_id: str, tensor: str) -> int:
    """A seed for one tensor of one expanded case: stable across machines and grid edits."""
    digest = hashlib.sha256(f"{sweep_seed}/{case_id}/{tensor}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # non-negative, fits a TOML integer


# The per-axis names a `where` constraint may use end in each spatial axis' suffix (1-D: the width;
# 3-D: the depth, then the height and the width), and an axis' pads are named by their two sides.
AXIS_SUFFIXES = {1: ("w",), 2: ("h", "w"), 3: ("d", "h", "w")}
PAD_SIDES = {"d": ("front", "back"), "h": ("top", "bottom"), "w": ("left", "right")}
DEFAULT_RANK = 2  # a sweep's spatial axes unless it says `rank`
_PER_AXIS = ("output_padding", "size", "kernel", "rate", "stride", "effective", "padded", "output", "unclamped_output")


def _per_axis_names(prefix: str, rank: int) -> tuple[str, ...]:
    if prefix == "pad":
        return tuple(f"pad_{side}" for suffix in AXIS_SUFFIXES[rank] for side in PAD_SIDES[suffix])
    return tuple(f"{prefix}_{suffix}" for suffix in AXIS_SUFFIXES[rank])


# rank -> prefix -> names, made once: `variables` runs for every combination of every sweep.
_NAMES = {rank: {prefix: _per_axis_names(prefix, rank) for prefix in (*_PER_AXIS, "pad")} for rank in AXIS_SUFFIXES}


def variables(values: Mapping[str, Any]) -> dict[str, Any]:
    """The names a `where` constraint may use, for one combination (of `rank` spatial axes, 2 unless stated)."""
    rank = values.get("rank", DEFAULT_RANK)
    size, kernel, rate, stride = (per_axis(values[name], rank) for name in ("size", "kernel_size", "rate", "stride"))
    padding = values["padding"]
    stated = tuple(tuple(p) for p in padding) if isinstance(padding, list) else padding
    op = operation_named(values.get("op", CONV))
    extra = per_axis(values.get("output_padding", 0), rank)
    geo: AnyGeometry = (
        transposed_geometry(stated, size, kernel, rate, stride, extra)
        if op == CONV_TRANSPOSE
        else geometry(stated, size, kernel, rate, stride)
    )
    padded = [i + before + after for i, (before, after) in zip(size, geo.pads, strict=True)]

    def named(prefix: str, per_axis_values: Sequence[int]) -> dict[str, int]:
        return dict(zip(_NAMES[rank][prefix], per_axis_values, strict=True))

    return {
        "op": op,
        "rank": rank,
        # Rank-free: what an expectation about any rank's dilated or strided calls says once.
        "max_rate": max(rate),
        "max_stride": max(stride),
        **named("output_padding", geo.output_padding if isinstance(geo, TransposedGeometry) else (0,) * rank),
        "batch": values["batch"],
        "channels": values["channels"],
        "out_channels": values["out_channels"],
        "groups": values["groups"],
        **named("size", size),
        **named("kernel", kernel),
        **named("rate", rate),
        **named("stride", stride),
        "padding": padding if isinstance(padding, str) else "explicit",
        **named("pad", [side for pair in geo.pads for side in pair]),
        **named("effective", geo.effective_kernel),
        **named("padded", padded),
        **named("output", geo.output_size),
        **named("unclamped_output", geo.unclamped_output_size),
        "valid_output": geo.has_valid_output,
    }


def record_variables(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The same names for a result record (what an expectation's `where` is evaluated on)."""
    try:
        padding = record["padding"]
        return _geometry_variables(
            tuple(record["input_shape"]),
            tuple(record["kernel_shape"]),
            record.get("operation", CONV),
            record["groups"],
            tuple(record["rate"]),
            tuple(record["stride"]),
            tuple(tuple(p) for p in padding) if isinstance(padding, list) else padding,
            None if record.get("output_padding") is None else tuple(record["output_padding"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


# Geometry alone decides them, and a worker judges every record of a geometry (the large tier's
# replicates) against the same entries: each geometry's names are worked out once (read-only).
@lru_cache(maxsize=1024)
def _geometry_variables(
    input_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    operation: str,
    groups: int,
    rate: tuple[int, ...],
    stride: tuple[int, ...],
    padding: Any,
    output_padding: tuple[int, ...] | None,
) -> Mapping[str, Any]:
    n, *size, c_in = input_shape
    *kernel, kernel_in, kernel_last = kernel_shape
    transposed = operation == CONV_TRANSPOSE  # its kernel is (*k, C_out / groups, C_in)
    return MappingProxyType(
        variables(
            {
                "rank": len(size),
                "batch": n,
                "size": size,
                "channels": c_in,
                "kernel_size": kernel,
                "out_channels": kernel_in * groups if transposed else kernel_last,
                "rate": rate,
                "stride": stride,
                "padding": padding,  # (`variables` takes a tuple of pairs as it takes a list)
                "groups": groups,
                "op": operation_named(operation),
                "output_padding": 0 if output_padding is None else output_padding,
            }
        )
    )


# The names of each rank, from one sample; every rank's, for a constraint on records of any rank.
RANK_NAMES = {
    rank: tuple(variables({**DEFAULT_SETTINGS, "rank": rank, "size": 1, "kernel_size": 1})) for rank in AXIS_SUFFIXES
}
VARIABLE_NAMES = tuple(dict.fromkeys(name for names in RANK_NAMES.values() for name in names))

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "abs": abs}


@dataclass(frozen=True)
class Constraint:
    """One `where` expression, parsed once: arithmetic, comparisons (also `in (1, 2)`), and/or/not, min/max/abs."""

    text: str
    tree: ast.Expression

    @classmethod
    def parse(cls, text: str, known: Sequence[str] = VARIABLE_NAMES) -> Constraint:
        """`known`: the names it may read (a sweep's rank's; by default every rank's, as for records)."""
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"{text!r} is not an expression: {exc.msg}") from None
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id not in known and node.id not in _FUNCTIONS:
                raise ValueError(f"{text!r} uses unknown name {node.id!r}; known: {', '.join(known)}")
            allowed = (
                ast.Expression,
                ast.BoolOp,
                ast.And,
                ast.Or,
                ast.UnaryOp,
                ast.Not,
                ast.USub,
                ast.BinOp,
                ast.Compare,
                ast.Name,
                ast.Load,
                ast.Constant,
                ast.Call,
                ast.Tuple,
                *_BINARY,
                *_COMPARE,
            )
            if not isinstance(node, allowed):
                raise ValueError(f"{text!r}: {type(node).__name__} is not allowed (use arithmetic and comparisons)")
            if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS):
                raise ValueError(f"{text!r}: only min, max and abs may be called")
            if isinstance(node, ast.Compare):
                _check_words(text, node)
        return cls(text, tree)

    @cached_property  # (holds asks it for every record or combination it is evaluated on)
    def names(self) -> list[str]:
        """The variables it reads, in order of first use."""
        found = [n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name) and n.id not in _FUNCTIONS]
        return list(dict.fromkeys(found))

    def holds(self, names: Mapping[str, Any]) -> bool:
        """Whether it holds for these names; one that names an axis they lack (a check of another
        rank: size_d of a 2-D one) does not."""
        if any(name not in names for name in self.names):
            return False
        return bool(_evaluate(self.tree.body, names))


# The words a string variable can equal: a comparison with any other is a typo that never holds.
_WORDS = {"op": (*OPERATIONS, *FORMER_NAMES), "padding": (*PADDING_WORDS, "explicit")}


def _check_words(text: str, compare: ast.Compare) -> None:
    """`op == 'deconv'` or `padding == 'same'` would silently never hold: say so instead."""
    operands = [compare.left, *compare.comparators]
    for variable, words in _WORDS.items():
        if not any(isinstance(o, ast.Name) and o.id == variable for o in operands):
            continue
        for operand in operands:
            constants = operand.elts if isinstance(operand, ast.Tuple) else [operand]
            for constant in constants:
                if (
                    isinstance(constant, ast.Constant)
                    and isinstance(constant.value, str)
                    and constant.value not in words
                ):
                    known = ", ".join(repr(word) for word in words)
                    raise ValueError(f"{text!r}: {variable} is never {constant.value!r} (it is one of {known})")


def _evaluate(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        # `op == 'conv2d'`, written before operations were rank-free, still means the forward op.
        return operation_named(node.value) if isinstance(node.value, str) else node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BoolOp):
        results = (_evaluate(v, names) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        value = _evaluate(node.operand, names)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(right_node, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(item, names) for item in node.elts)
    if isinstance(node, ast.Call):
        return _FUNCTIONS[node.func.id](*(_evaluate(a, names) for a in node.args))  # type: ignore[attr-defined]
    raise ValueError(f"cannot evaluate {type(node).__name__}")


def combinations_count(sweep: Mapping[str, Any]) -> int:
    return math.prod(len(values) for values in sweep["axes"].values()) * int(sweep.get("replicates", 1))


def expand(sweep: Mapping[str, Any], defaults: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Raw case tables (as if written in the file) for every combination that meets `where`.

    Raises SweepError for a problem with the sweep as a whole (a bad constraint, a missing size).
    """
    axes: Mapping[str, list[Any]] = sweep["axes"]
    for name in axes:
        if name in sweep:
            raise SweepError(f"axes.{name}", f"{name!r} is both an axis and a fixed setting; keep one")
    fixed = {name: sweep.get(name, defaults.get(name, DEFAULT_SETTINGS.get(name))) for name in SETTINGS}
    rank = fixed["rank"] = sweep.get("rank", DEFAULT_RANK)
    for name in REQUIRED_SETTINGS:
        if name not in axes and fixed[name] is None:
            raise SweepError(name, f"needs {name!r}, as an axis or as a fixed setting")
    count = combinations_count(sweep)
    if count > MAX_COMBINATIONS:
        raise SweepError("axes", f"the axes make {count} combinations, beyond the limit of {MAX_COMBINATIONS}")
    constraints = []
    for text in sweep.get("where", []):
        try:
            constraints.append(Constraint.parse(text, RANK_NAMES[rank]))
        except ValueError as exc:
            raise SweepError("where", str(exc)) from None
    ordered = [name for name in SETTINGS if name in axes]
    _check_rank(axes, fixed, rank)
    input_data = {"generator": "normal", **sweep.get("input", {})}
    kernel_data = {"generator": "normal", **sweep.get("kernel", {})}
    for chosen in itertools.product(*(axes[name] for name in ordered)):
        values = {**fixed, **dict(zip(ordered, chosen, strict=True))}
        try:
            names = variables(values)
        except (TypeError, ValueError):  # a malformed value: the built case reports it precisely
            names = None
        if names is not None and not all(c.holds(names) for c in constraints):
            continue
        case_id = "-".join([sweep["id"], *(id_part(name, values[name]) for name in ordered)])
        replicates = sweep.get("replicates", 1)
        if replicates == 1:
            yield _raw_case(sweep, case_id, values, input_data, kernel_data)
            continue
        # Draws of data on one geometry: a framework compiles it once and is checked on many inputs.
        for draw in range(replicates):
            yield _raw_case(sweep, f"{case_id}-d{draw}", values, input_data, kernel_data)


# The settings a sweep states per spatial axis.
_PER_AXIS_SETTINGS = ("size", "kernel_size", "rate", "stride", "padding", "output_padding")


def _check_rank(axes: Mapping[str, list[Any]], fixed: Mapping[str, Any], rank: int) -> None:
    """Every per-axis value states the sweep's `rank` axes (or one value for all of them)."""
    for name in _PER_AXIS_SETTINGS:
        for value in axes.get(name, [fixed[name]]):
            if isinstance(value, list) and len(value) != rank:
                raise SweepError(
                    name, f"{value} states {len(value)} axes; the sweep has {rank} (rank = {rank}): one value, "
                    "or one per axis",
                )  # fmt: skip


def _raw_case(
    sweep: Mapping[str, Any],
    case_id: str,
    values: Mapping[str, Any],
    input_data: Mapping[str, Any],
    kernel_data: Mapping[str, Any],
) -> dict[str, Any]:
    size = per_axis(values["size"], values["rank"])
    kernel = per_axis(values["kernel_size"], values["rank"])
    groups = values["groups"]
    channels = values["channels"]
    # Integer division keeps the shape well-formed; a remainder is reported by the case's own check.
    per_group = max(1, channels // groups) if channels % groups == 0 else channels
    out_channels = values["out_channels"]
    if values["op"] == CONV_TRANSPOSE:  # the forward op's kernel: (*k, C_out / groups, C_in)
        if out_channels % groups:  # (no transposed kernel has this many outputs: the case cannot say it)
            raise SweepError(
                "where",
                f"combination {case_id!r}: out_channels {out_channels} is not divisible by groups {groups}; drop such "
                'combinations with a `where` constraint (e.g. "out_channels % groups == 0")',
            )
        kernel_shape = [*kernel, out_channels // groups, channels]
    else:
        kernel_shape = [*kernel, per_group, out_channels]
    seed = sweep["seed"]
    raw: dict[str, Any] = {
        "id": case_id,
        "description": sweep.get("description", ""),
        "input": _data(input_data, [values["batch"], *size, channels], seed, case_id, "input"),
        "kernel": _data(kernel_data, kernel_shape, seed, case_id, "kernel"),
        "rate": values["rate"],
        "stride": values["stride"],
        "padding": values["padding"],
        "groups": groups,
        "tags": [*sweep.get("tags", []), sweep["id"]],
    }
    for key in ("op", "output_padding"):  # stated even when default: the file's defaults must not override the sweep
        raw[key] = values[key]
    for key in ("source", "dtypes", "tier", "derivatives"):
        if key in sweep:
            raw[key] = sweep[key]
    return raw


def _data(spec: Mapping[str, Any], shape: list[int], seed: int, case_id: str, tensor: str) -> dict[str, Any]:
    data = {**spec, "shape": shape}
    if spec["generator"] in RANDOM_GENERATORS:
        data["seed"] = derived_seed(seed, case_id, tensor)
    return data
