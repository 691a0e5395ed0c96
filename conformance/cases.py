"""Loading and validating declarative case files (TOML, checked against cases.schema.json).

A file that cannot be parsed, or a case that breaks a rule, becomes a `CaseError` naming the
file, the case, the field and the line; every other case of the same run still loads.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from conformance.dtypes import float_format
from conformance.generators import content_hash, generate
from conformance.semantics import Geometry, PaddingSpec, geometry, pair

SCHEMA_PATH = Path(__file__).with_name("schema") / "cases.schema.json"
# Refuse tensors above this many elements before allocating them (float64: 512 MiB).
MAX_TENSOR_ELEMENTS = 1 << 26
# Files under a cases directory that hold other data, not cases.
NON_CASE_FILES = frozenset({"expectations.toml"})


@dataclass(frozen=True)
class CaseError:
    """A problem in a case file, precise enough to fix without reading the harness."""

    file: str
    message: str
    case: str | None = None
    field: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        parts = [where]
        if self.case:
            parts.append(f"case {self.case!r}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ": ".join(parts) + f": {self.message}"


class CaseFileError(Exception):
    def __init__(self, error: CaseError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, eq=False)  # identity hash: a Case is a cache key for its data
class Case:
    file: str
    suite: str  # the file's stem, e.g. "documents"
    id: str
    line: int | None
    description: str
    source: str
    tags: tuple[str, ...]
    dtypes: tuple[str, ...]
    input_spec: Mapping[str, Any]
    kernel_spec: Mapping[str, Any]
    input_shape: tuple[int, int, int, int]
    kernel_shape: tuple[int, int, int, int]
    rate: tuple[int, int]
    stride: tuple[int, int]
    padding: PaddingSpec
    groups: int
    expect_kind: str  # "reference", "values" or "no-valid-output"
    expected_values: np.ndarray | None = dataclass_field(default=None, repr=False)

    @property
    def qualified_id(self) -> str:
        return f"{self.suite}/{self.id}"

    @property
    def geometry(self) -> Geometry:
        return geometry(self.padding, self.input_shape[1:3], self.kernel_shape[:2], self.rate, self.stride)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        o_h, o_w = self.geometry.output_hw
        return (self.input_shape[0], o_h, o_w, self.kernel_shape[3])

    @property
    def expects_no_output(self) -> bool:
        return not self.geometry.has_valid_output


@dataclass
class LoadResult:
    cases: list[Case]
    errors: list[CaseError]


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def _nested_shape(values: Any, where: str) -> tuple[int, ...]:
    """The shape of a rectangular nested list, or ValueError saying where it is ragged."""
    if not isinstance(values, list):
        return ()
    if not values:
        raise ValueError(f"{where} has an empty list")
    shapes = {_nested_shape(v, f"{where}[{i}]") for i, v in enumerate(values)}
    if len(shapes) != 1:
        raise ValueError(f"{where} is ragged: its items have shapes {sorted(shapes)}")
    return (len(values), *shapes.pop())


def id_lines(text: str) -> dict[str, int]:
    """Line of each `id = "..."` in the file, so errors can point at the case."""
    lines = {}
    for number, line in enumerate(text.splitlines(), start=1):
        found = re.match(r"""\s*id\s*=\s*["']([^"']*)["']""", line)
        if found:
            lines.setdefault(found.group(1), number)
    return lines


class SourceLines:
    """Where things are in a TOML file's text, since `tomllib` gives no positions.

    `[[table]]` blocks are numbered in file order, as they appear in the parsed array, so an error
    at `case[3].rate` points at the `rate = ...` line of the fourth `[[case]]`, not only at the case.
    """

    def __init__(self, text: str, table: str) -> None:
        self.lines = text.splitlines()
        header = re.compile(r"\s*\[\[\s*" + re.escape(table) + r"\s*\]\]")
        any_header = re.compile(r"\s*\[")
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
        pattern = re.compile(r"""\s*["']?""" + re.escape(key) + r"""["']?\s*=""")
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
                while end < len(self.lines) and not re.match(r"\s*\[", self.lines[end]):
                    end += 1
                return (self._find_key(number + 1, end, str(path[0])) if path else None) or number + 1
        return None

    def top_level_line(self, key: str) -> int | None:
        first_header = next((n for n, line in enumerate(self.lines) if re.match(r"\s*\[", line)), len(self.lines))
        return self._find_key(0, first_header, key)


def _wrong_alternative(error: jsonschema.ValidationError) -> bool:
    """The value is of another kind than this alternative (wrong type, or another generator)."""
    if error.validator == "type" and not error.relative_path:
        return True
    return error.validator in ("enum", "const") and bool(error.relative_path)


# Names other frameworks use for our keys, so a ported case gets a precise hint.
KEY_ALIASES = {
    "dilation": "rate",
    "dilations": "rate",
    "dilation_rate": "rate",
    "rhs_dilation": "rate",
    "strides": "stride",
    "window_strides": "stride",
    "pad": "padding",
    "pads": "padding",
    "dtype": "dtypes",
    "filter": "kernel",
    "filters": "kernel",
    "weight": "kernel",
    "weights": "kernel",
    "value": "input",
    "x": "input",
    "lhs": "input",
    "rhs": "kernel",
    "group": "groups",
    "feature_group_count": "groups",
    "expected": "expect",
    "name": "id",
}


def _suggest(name: str, allowed: list[str]) -> str | None:
    if KEY_ALIASES.get(name) in allowed:
        return KEY_ALIASES[name]
    close = difflib.get_close_matches(name, allowed, n=1) or [
        KEY_ALIASES[m] for m in difflib.get_close_matches(name, list(KEY_ALIASES), n=1) if KEY_ALIASES[m] in allowed
    ]
    return close[0] if close else None


def explain_schema_error(error: jsonschema.ValidationError) -> tuple[str, list[Any]]:
    """A readable message and the path of the offending field for a schema violation."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed))
        hints = []
        for name in unexpected:
            close = _suggest(name, allowed)
            hints.append(f"unknown key {name!r}" + (f" (did you mean {close!r}?)" if close else ""))
        return "; ".join(hints) + f"; allowed keys: {', '.join(allowed)}", path + unexpected[:1]
    if error.validator == "required":
        missing = re.findall(r"'([^']+)' is a required property", error.message)
        return error.message, path + missing[:1]
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Explain the alternative the author meant: one whose discriminating keys (e.g. the
        # generator name) match, and of those the one with the fewest complaints.
        branches: dict[Any, list[jsonschema.ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        meant = [errs for errs in branches.values() if not any(_wrong_alternative(e) for e in errs)]
        meant = meant or list(branches.values())
        return explain_schema_error(jsonschema.exceptions.best_match(min(meant, key=len)))
    return error.message, path


def field_path(path: list[Any]) -> str:
    return ".".join(str(p) for p in path)


def load_file(path: Path, root: Path | None = None) -> LoadResult:
    """Every valid case in one file, and an error for everything else."""
    label = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return LoadResult([], [CaseError(label, f"cannot read the file: {exc}")])
    if not text.strip():
        return LoadResult([], [CaseError(label, "the file is empty: a case file needs at least one [[case]]")])
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        return LoadResult(
            [], [CaseError(label, f"TOML syntax error: {exc}", line=int(line.group(1)) if line else None)]
        )
    lines = id_lines(text)
    source = SourceLines(text, "case")
    errors: list[CaseError] = []

    raw_cases = document.get("case")
    if not isinstance(raw_cases, list):
        raw_cases = []
    # Schema errors are attributed to the case they occur in; that case is then dropped.
    bad_indices: set[int] = set()
    for error in sorted(_validator().iter_errors(document), key=lambda e: list(e.absolute_path)):
        message, path_parts = explain_schema_error(error)
        case_id = None
        if len(path_parts) >= 2 and path_parts[0] == "case" and isinstance(path_parts[1], int):
            index = path_parts[1]
            bad_indices.add(index)
            raw = raw_cases[index] if index < len(raw_cases) else {}
            case_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else f"#{index + 1}"
            field_parts = path_parts[2:]
            line = source.entry_line(index, field_parts)
        elif len(path_parts) >= 2 and path_parts[0] == "defaults":
            field_parts = path_parts
            line = source.section_line("defaults", path_parts[1:])
        else:
            field_parts = path_parts
            line = source.top_level_line(str(path_parts[0])) if path_parts else None
        field_name = field_path(field_parts)
        errors.append(CaseError(label, message, case=case_id, field=field_name or None, line=line))
    if errors and not bad_indices:  # a file-level problem (e.g. no [[case]] at all): nothing to load
        return LoadResult([], errors)

    defaults = document.get("defaults", {})
    suite = path.stem
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_cases):
        if index in bad_indices:
            continue
        case_id = raw["id"]
        line = lines.get(case_id)
        if case_id in seen:
            errors.append(
                CaseError(label, f"duplicate case id (first used in case #{seen[case_id] + 1})", case_id, "id", line)
            )
            continue
        seen[case_id] = index
        try:
            cases.append(_build_case(label, suite, raw, defaults, line))
        except CaseFileError as exc:
            # Point at the offending key's own line when the case states it (not inherited).
            field_line = source.entry_line(index, exc.error.field.split(".")) if exc.error.field else None
            errors.append(replace(exc.error, line=field_line or exc.error.line))
    return LoadResult(cases, errors)


def _tensor_shape(label: str, case_id: str, line: int | None, name: str, spec: Mapping[str, Any]) -> tuple[int, ...]:
    def fail(message: str, sub: str = "") -> CaseFileError:
        return CaseFileError(CaseError(label, message, case_id, name + sub, line))

    if "values" in spec:
        try:
            shape = _nested_shape(spec["values"], f"{name}.values")
        except ValueError as exc:
            raise fail(str(exc), ".values") from None
        if len(shape) != 4:
            raise fail(
                f"values must nest 4 deep ({'NHWC' if name == 'input' else 'HWIO'}), got shape {shape}", ".values"
            )
        if "shape" in spec and tuple(spec["shape"]) != shape:
            raise fail(f"declared shape {spec['shape']} but the values have shape {list(shape)}", ".shape")
    else:
        shape = tuple(spec["shape"])
    elements = int(np.prod(shape, dtype=np.int64))
    if elements > MAX_TENSOR_ELEMENTS:
        raise fail(f"{elements} elements exceeds the limit of {MAX_TENSOR_ELEMENTS} per tensor", ".shape")
    return shape


def _build_case(label: str, suite: str, raw: Mapping[str, Any], defaults: Mapping[str, Any], line: int | None) -> Case:
    case_id = raw["id"]

    def fail(message: str, field_name: str) -> CaseFileError:
        return CaseFileError(CaseError(label, message, case_id, field_name, line))

    def setting(name: str, fallback: Any) -> Any:
        return raw.get(name, defaults.get(name, fallback))

    input_shape = _tensor_shape(label, case_id, line, "input", raw["input"])
    kernel_shape = _tensor_shape(label, case_id, line, "kernel", raw["kernel"])
    groups = int(setting("groups", 1))
    c_in, c_out = input_shape[3], kernel_shape[3]
    if kernel_shape[2] * groups != c_in:
        raise fail(
            f"kernel in-channels {kernel_shape[2]} x groups {groups} != input channels {c_in} "
            "(HWIO kernel: its third axis is C_in / groups)",
            "kernel.shape",
        )
    if c_out % groups:
        raise fail(f"kernel out-channels {c_out} is not divisible by groups {groups}", "groups")
    padding = setting("padding", "VALID")
    if isinstance(padding, list):
        padding = (tuple(padding[0]), tuple(padding[1]))
    case = Case(
        file=label,
        suite=suite,
        id=case_id,
        line=line,
        description=raw.get("description", ""),
        source=setting("source", ""),
        tags=tuple(dict.fromkeys([*defaults.get("tags", []), *raw.get("tags", [])])),
        dtypes=tuple(setting("dtypes", ["float32"])),
        input_spec=raw["input"],
        kernel_spec=raw["kernel"],
        input_shape=input_shape,  # type: ignore[arg-type]
        kernel_shape=kernel_shape,  # type: ignore[arg-type]
        rate=pair(setting("rate", 1)),
        stride=pair(setting("stride", 1)),
        padding=padding,
        groups=groups,
        expect_kind="reference",
    )
    expect = raw.get("expect", {"kind": "reference"})
    kind = expect["kind"]
    output_shape = case.output_shape
    if "output_shape" in expect and tuple(expect["output_shape"]) != output_shape:
        raise fail(
            f"states output shape {expect['output_shape']} but the geometry gives {list(output_shape)} "
            f"(pads {case.geometry.pads}, effective kernel {case.geometry.effective_kernel_hw})",
            "expect.output_shape",
        )
    if kind == "no-valid-output" and case.geometry.has_valid_output:
        raise fail(f"says no valid output, but the geometry gives output shape {list(output_shape)}", "expect.kind")
    expected_values = None
    if kind == "values":
        if not case.geometry.has_valid_output:
            raise fail("gives values, but the dilated kernel does not fit: there is no valid output", "expect.kind")
        key = "values" if "values" in expect else "plane"
        try:
            shape = _nested_shape(expect[key], f"expect.{key}")
        except ValueError as exc:
            raise fail(str(exc), f"expect.{key}") from None
        want = output_shape if key == "values" else output_shape[1:3]
        if shape != want:
            raise fail(f"has shape {list(shape)} but the output has shape {list(want)}", f"expect.{key}")
        array = np.asarray(expect[key], dtype=np.float64)
        if key == "plane":
            array = np.broadcast_to(array[None, :, :, None], output_shape).copy()
        expected_values = array
    return replace(case, expect_kind=kind, expected_values=expected_values)


def case_files(paths: list[Path]) -> Iterator[tuple[Path, Path]]:
    """(file, root) for every case file under the given files or directories, sorted."""
    for root in paths:
        if root.is_file():
            yield root, root.parent
            continue
        for path in sorted(root.rglob("*.toml")):
            if path.name not in NON_CASE_FILES:
                yield path, root


def load_paths(paths: list[Path]) -> LoadResult:
    result = LoadResult([], [])
    for path, root in case_files(paths):
        loaded = load_file(path, root)
        result.cases.extend(loaded.cases)
        result.errors.extend(loaded.errors)
    return result


@dataclass(frozen=True)
class CaseData:
    """One case materialised in one dtype: what every target of that (case, dtype) shares."""

    x: np.ndarray  # NHWC, in the case dtype
    w: np.ndarray  # HWIO, in the case dtype
    x_hash: str
    w_hash: str


def tensor(spec: Mapping[str, Any], shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A case tensor: made in float64, then rounded once to the case dtype."""
    values = np.asarray(spec["values"], dtype=np.float64) if "values" in spec else generate(spec, shape)
    return values.astype(float_format(dtype).numpy_dtype)


def materialize(case: Case, dtype: str) -> CaseData:
    x = tensor(case.input_spec, case.input_shape, dtype)
    w = tensor(case.kernel_spec, case.kernel_shape, dtype)
    return CaseData(x=x, w=w, x_hash=content_hash(x), w_hash=content_hash(w))
