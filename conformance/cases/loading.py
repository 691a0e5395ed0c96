"""Loading case files: TOML checked against cases.schema.json, then every rule the schema cannot
state (channels and groups, shapes of stated values, work size, expected shapes); sweeps expanded.

A file that cannot be parsed, or a case that breaks a rule, becomes a `CaseError` naming the
file, the case, the field and the line; every other case of the same run still loads.
"""

from __future__ import annotations

import math
import re
import tomllib
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from conformance import sweeps
from conformance.cases.model import Case, CaseError, CaseFileError, LoadResult, stored_array
from conformance.cases.positions import SourceLines, id_lines
from conformance.cases.schema_errors import explain_schema_error, field_path, strict_validator
from conformance.semantics import (
    CONV,
    CONV_TRANSPOSE,
    PaddingSpec,
    Sizes,
    TransposedGeometry,
    operation_named,
    output_padding_limit,
    per_axis,
)

SCHEMA_PATH = Path(__file__).parent.parent / "schema" / "cases.schema.json"
# Refuse tensors above this many elements before allocating them (float64: 512 MiB).
MAX_TENSOR_ELEMENTS = 1 << 26
# Files under a cases directory that hold other data, not cases.
NON_CASE_FILES = frozenset({"expectations.toml", "composites.toml", "contracts.toml"})


@cache
def _validator() -> Any:
    return strict_validator(SCHEMA_PATH)


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


def load_file(path: Path, root: Path | None = None, raw_bytes: bytes | None = None) -> LoadResult:
    """Every valid case in one file, and an error for everything else. `raw_bytes`: the file's
    bytes, read already (conformance/cases/load_cache.py keys its entry on the bytes it loads)."""
    label = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
    try:
        raw_bytes = path.read_bytes() if raw_bytes is None else raw_bytes
    except OSError as exc:
        return LoadResult([], [CaseError(label, f"cannot read the file: {exc.strerror or exc}")])
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        line: int | None = raw_bytes[: exc.start].count(b"\n") + 1
        message = f"not UTF-8 text: byte 0x{raw_bytes[exc.start]:02x} cannot be decoded (save the file as UTF-8)"
        return LoadResult([], [CaseError(label, message, line=line)])
    if not text.strip():
        return LoadResult([], [CaseError(label, f"the file is empty: {NEEDS_A_CASE}")])
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        return LoadResult(
            [], [CaseError(label, f"TOML syntax error: {exc}", line=int(found.group(1)) if found else None)]
        )
    lines = id_lines(text)
    source = SourceLines(text, "case")
    sweep_source = SourceLines(text, "sweep")
    errors: list[CaseError] = []

    raw_cases = document.get("case")
    if not isinstance(raw_cases, list):
        raw_cases = []
    raw_sweeps = document.get("sweep")
    if not isinstance(raw_sweeps, list):
        raw_sweeps = []
    if "case" not in document and "sweep" not in document:
        return LoadResult([], [CaseError(label, f"no [[case]] found: {NEEDS_A_CASE}", field="case")])
    # Schema errors are attributed to the case (or sweep) they occur in; that entry is then dropped.
    bad_indices: set[int] = set()
    bad_sweeps: set[int] = set()
    for error in sorted(_validator().iter_errors(document), key=lambda e: list(e.absolute_path)):
        message, path_parts = explain_schema_error(error)
        case_id = None
        entry = "case"
        if len(path_parts) >= 2 and path_parts[0] in ("case", "sweep") and isinstance(path_parts[1], int):
            index = path_parts[1]
            entry = path_parts[0]
            (bad_indices if entry == "case" else bad_sweeps).add(index)
            entries = raw_cases if entry == "case" else raw_sweeps
            raw = entries[index] if index < len(entries) else {}
            case_id = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else f"#{index + 1}"
            field_parts = path_parts[2:]
            line = (source if entry == "case" else sweep_source).entry_line(index, field_parts)
        elif len(path_parts) >= 2 and path_parts[0] == "defaults":
            field_parts = path_parts
            line = source.section_line("defaults", path_parts[1:])
        else:
            field_parts = path_parts
            line = source.top_level_line(str(path_parts[0])) if path_parts else None
        if path_parts[:1] == ["case"] and len(path_parts) <= 2:
            message = _explain_case_table(document.get("case"), message)
            line = line or source.top_level_line("case")
        field_name = field_path(field_parts)
        errors.append(CaseError(label, message, case=case_id, field=field_name or None, line=line, entry=entry))
    errors = _drop_echoes(errors)
    if errors and not bad_indices and not bad_sweeps:  # a file-level problem: nothing to load
        return LoadResult([], errors)

    defaults = {"tier": document.get("tier", "default"), **document.get("defaults", {})}
    suite = path.stem
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_cases):
        if index in bad_indices:
            continue
        case_id = raw["id"]
        line = lines.get(case_id)
        if case_id in seen:
            first = (
                f"case #{seen[case_id] + 1}, line {lines[case_id]}"
                if case_id in lines
                else f"case #{seen[case_id] + 1}"
            )
            message = f"duplicate case id (first used in {first}); ids must be unique within a file"
            errors.append(CaseError(label, message, case_id, "id", source.entry_line(index, ["id"]) or line))
            continue
        seen[case_id] = index
        raw = _files_beside(raw, path.parent)
        try:
            cases.append(build_case(label, suite, raw, defaults, line))
        except CaseFileError as exc:
            # Point at the offending key's own line when the case states it (not inherited).
            field_line = source.entry_line(index, exc.error.field.split(".")) if exc.error.field else None
            errors.append(replace(exc.error, line=field_line or exc.error.line))
    for index, raw_sweep in enumerate(raw_sweeps):
        if index not in bad_sweeps:
            _load_sweep(label, suite, raw_sweep, defaults, sweep_source.entry_line(index, []), seen, cases, errors)
    return LoadResult(cases, errors)


def _load_sweep(
    label: str,
    suite: str,
    raw_sweep: Mapping[str, Any],
    defaults: Mapping[str, Any],
    line: int | None,
    seen: dict[str, Any],
    cases: list[Case],
    errors: list[CaseError],
) -> None:
    """Expand one sweep into cases; a combination the loader refuses is reported once, with the
    number of others that fail the same way, and the rest of the sweep still loads."""
    sweep_id = raw_sweep["id"]
    failed: list[CaseError] = []
    try:
        for raw in sweeps.expand(raw_sweep, defaults):
            if raw["id"] in seen:
                message = f"expands to case {raw['id']!r}, which is already defined"
                errors.append(CaseError(label, message, sweep_id, "axes", line, "sweep"))
                continue
            seen[raw["id"]] = sweep_id
            try:
                cases.append(build_case(label, suite, raw, defaults, line))
            except CaseFileError as exc:
                failed.append(exc.error)
    except sweeps.SweepError as exc:
        errors.append(CaseError(label, str(exc), sweep_id, exc.field, line, "sweep"))
        return
    if failed:
        first = failed[0]
        more = f" ({len(failed) - 1} more combinations fail too)" if len(failed) > 1 else ""
        message = (
            f"combination {first.case!r}: {first.field}: {first.message}{more}; "
            'drop such combinations with a `where` constraint (e.g. "channels % groups == 0")'
        )
        errors.append(CaseError(label, message, sweep_id, "where", line, "sweep"))


NEEDS_A_CASE = "a case file needs at least one [[case]] (or [[sweep]]) table"


def _explain_case_table(value: Any, message: str) -> str:
    """`case` itself is missing or malformed: say how a case is written rather than what the schema wants."""
    if value is None:
        return f"no [[case]] found: {NEEDS_A_CASE}"
    if isinstance(value, dict):
        return "'case' is a single table: write each case as [[case]] (double brackets), one per case"
    if not isinstance(value, list):
        return f"'case' is a {type(value).__name__}: {NEEDS_A_CASE}, each with id, input and kernel"
    return message.replace("is not of type 'object'", "is not a table: write each case as [[case]] with its fields")


def _drop_echoes(errors: list[CaseError]) -> list[CaseError]:
    """One mistake, one error: a misspelt key is also a missing one; keep only the misspelling."""
    suggested = {(e.case, name) for e in errors for name in re.findall(r"did you mean '([^']+)'\?", e.message)}
    return [
        e
        for e in errors
        if not (e.message.endswith("is a required property") and (e.case, (e.field or "").split(".")[-1]) in suggested)
    ]


def _files_beside(raw: Mapping[str, Any], folder: Path) -> Mapping[str, Any]:
    """A case whose tensors name .npz files, with those paths made absolute (relative to its file)."""
    resolved = {
        name: {**raw[name], "file": str((folder / raw[name]["file"]).resolve())}
        for name in ("input", "kernel")
        if isinstance(raw.get(name), Mapping) and "file" in raw[name]
    }
    return {**raw, **resolved} if resolved else raw


# An input (N, *spatial, C) or kernel (*spatial, C_in / groups, C_out) of 1 to 3 spatial axes.
TENSOR_RANKS = (3, 4, 5)


def _layout(name: str) -> str:
    if name == "input":
        return "an input is (N, *spatial, C) with 1 to 3 spatial axes: NWC, NHWC or NDHWC"
    return "a kernel is (*spatial, C_in / groups, C_out) with 1 to 3 spatial axes: WIO, HWIO or DHWIO"


def _tensor_shape(label: str, case_id: str, line: int | None, name: str, spec: Mapping[str, Any]) -> tuple[int, ...]:
    def fail(message: str, sub: str = "") -> CaseFileError:
        return CaseFileError(CaseError(label, message, case_id, name + sub, line))

    if "file" in spec:
        try:
            shape = stored_array(spec["file"], spec["key"]).shape
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise fail(f"cannot read {spec['key']!r} from {spec['file']}: {exc}", ".file") from None
        if len(shape) not in TENSOR_RANKS:
            raise fail(f"{spec['key']!r} has shape {list(shape)}: {_layout(name)}", ".key")
    elif "values" in spec:
        try:
            shape = _nested_shape(spec["values"], f"{name}.values")
        except ValueError as exc:
            raise fail(str(exc), ".values") from None
        if len(shape) not in TENSOR_RANKS:
            raise fail(f"values of shape {list(shape)}: {_layout(name)}", ".values")
        if "shape" in spec and tuple(spec["shape"]) != shape:
            raise fail(f"declared shape {spec['shape']} but the values have shape {list(shape)}", ".shape")
    else:
        shape = tuple(spec["shape"])
    for number, element in enumerate(spec.get("set", [])):
        if len(element["at"]) != len(shape):
            axes = f"index {element['at']} has {len(element['at'])} axes"
            raise fail(f"{axes}, the shape {list(shape)} {len(shape)}", f".set[{number}].at")
        if any(not -dim <= index < dim for index, dim in zip(element["at"], shape, strict=True)):
            raise fail(f"index {element['at']} is outside the shape {list(shape)}", f".set[{number}].at")
    elements = math.prod(shape)  # Python ints: a product of large axes must not wrap around
    if elements > MAX_TENSOR_ELEMENTS:
        raise fail(f"{elements} elements exceeds the limit of {MAX_TENSOR_ELEMENTS} per tensor", ".shape")
    if spec.get("generator") == "integers" and spec["low"] > spec["high"]:
        raise fail(f"low {spec['low']} is above high {spec['high']}: the range is empty", ".low")
    return shape


def build_case(label: str, suite: str, raw: Mapping[str, Any], defaults: Mapping[str, Any], line: int | None) -> Case:
    case_id = raw["id"]

    def fail(message: str, field_name: str) -> CaseFileError:
        return CaseFileError(CaseError(label, message, case_id, field_name, line))

    def setting(name: str, fallback: Any) -> Any:
        return raw.get(name, defaults.get(name, fallback))

    input_shape = _tensor_shape(label, case_id, line, "input", raw["input"])
    kernel_shape = _tensor_shape(label, case_id, line, "kernel", raw["kernel"])
    groups = int(setting("groups", 1))
    op = operation_named(setting("op", CONV))
    rank = len(input_shape) - 2
    if len(kernel_shape) - 2 != rank:
        raise _ranks_disagree(raw, input_shape, kernel_shape, fail)
    _check_channels(op, input_shape, kernel_shape, groups, fail)
    padding = setting("padding", "VALID")
    if padding == "CAUSAL" and op == CONV_TRANSPOSE:
        raise fail("CAUSAL padding is the forward convolution's; a transposed one states its crops", "padding")
    if isinstance(padding, list):
        padding = tuple(tuple(side) for side in padding)
        if len(padding) != rank:
            raise fail(f"{len(padding)} [before, after] pairs for {rank} spatial axes: one per axis", "padding")
    per_axis_values = {}
    for name in ("rate", "stride", "output_padding"):
        try:
            per_axis_values[name] = per_axis(setting(name, 0 if name == "output_padding" else 1), rank)
        except ValueError as exc:
            raise fail(str(exc), name) from None
    rate, stride = per_axis_values["rate"], per_axis_values["stride"]
    output_padding = _output_padding(op, per_axis_values["output_padding"], padding, rate, stride, fail)
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
        input_shape=input_shape,
        kernel_shape=kernel_shape,
        rate=rate,
        stride=stride,
        padding=padding,
        groups=groups,
        expect_kind="reference",
        tier=raw.get("tier", defaults.get("tier", "default")),
        derivatives=int(setting("derivatives", 0)),
        op=op,
        output_padding=output_padding,
    )
    _check_work_size(case, fail)
    expect = raw.get("expect", {"kind": "reference"})
    kind = expect["kind"]
    given = [key for key in ("values", "plane") if key in expect]
    if kind == "values" and len(given) != 1:
        raise fail(
            "kind = \"values\" needs exactly one of 'values' (the whole NHWC output) or 'plane' (one H x W grid)"
            + (", not both" if given else ""),
            "expect." + (given[-1] if given else "kind"),
        )
    if kind != "values" and given:
        raise fail(
            f"'{given[0]}' is only read with kind = \"values\" (this expect says {kind!r})", f"expect.{given[0]}"
        )
    output_shape = case.output_shape
    if "output_shape" in expect and tuple(expect["output_shape"]) != output_shape:
        raise fail(
            f"states output shape {expect['output_shape']} but the geometry gives {list(output_shape)} "
            f"(pads {case.geometry.pads}, effective kernel {case.geometry.effective_kernel})",
            "expect.output_shape",
        )
    if kind == "no-valid-output" and case.geometry.has_valid_output:
        raise fail(f"says no valid output, but the geometry gives output shape {list(output_shape)}", "expect.kind")
    expected_values = None
    if kind == "values":
        if not case.geometry.has_valid_output:
            raise fail(f"gives values, but there is no valid output ({_why_no_output(case)})", "expect.kind")
        key = "values" if "values" in expect else "plane"
        try:
            shape = _nested_shape(expect[key], f"expect.{key}")
        except ValueError as exc:
            raise fail(str(exc), f"expect.{key}") from None
        want = output_shape if key == "values" else output_shape[1:-1]
        if shape != want:
            raise fail(f"has shape {list(shape)} but the output has shape {list(want)}", f"expect.{key}")
        array = np.asarray(expect[key], dtype=np.float64)
        if key == "plane":
            array = np.broadcast_to(array[None, ..., None], output_shape).copy()
        expected_values = array
    return replace(case, expect_kind=kind, expected_values=expected_values)


def _ranks_disagree(
    raw: Mapping[str, Any],
    input_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    fail: Callable[[str, str], CaseFileError],
) -> CaseFileError:
    """Input and kernel state different numbers of spatial axes: the error names the tensor that has
    fewer (most often an input whose batch axis, or a kernel whose channel axis, was left out)."""
    if len(input_shape) < len(kernel_shape):
        name, shape, other_name, other = "input", input_shape, "kernel", kernel_shape
        hint = "is its batch axis missing? (N, *spatial, C)"
    else:
        name, shape, other_name, other = "kernel", kernel_shape, "input", input_shape
        hint = "a kernel is (*spatial, C_in / groups, C_out)"
    spec = raw[name]
    field = f"{name}.values" if "values" in spec else f"{name}.key" if "file" in spec else f"{name}.shape"
    return fail(
        f"{name} shape {list(shape)} has {len(shape) - 2} spatial axes, the {other_name} {list(other)} "
        f"{len(other) - 2}: the same number in both; {hint}",
        field,
    )


def _check_channels(
    op: str, input_shape: tuple[int, ...], kernel_shape: tuple[int, ...], groups: int, fail: Any
) -> None:
    """Input channels, kernel axes and groups agree: HWIO (k_h, k_w, C_in/g, C_out) for conv2d, the
    forward op's kernel (k_h, k_w, C_out/g, C_in) for conv_transpose. Batch and channels may be 0 (a
    zero-sized tensor: the right shape, and zeros where the sum is empty); sizes in space may not."""
    for name, shape, spatial in (
        ("input", input_shape, input_shape[1:-1]),
        ("kernel", kernel_shape, kernel_shape[:-2]),
    ):
        if 0 in spatial:
            what = "spatial sizes" if name == "input" else "kernel sizes"
            raise fail(
                f"{name} shape {list(shape)}: its {what} must be at least 1 (only batch and channels may be 0)", name
            )
    c_in = input_shape[-1]
    if c_in % groups:
        raise fail(f"groups {groups} does not divide the {c_in} input channels", "groups")
    if op == CONV_TRANSPOSE:
        if kernel_shape[-1] != c_in:
            raise fail(
                f"kernel's fourth axis {kernel_shape[-1]} != input channels {c_in} (a conv_transpose kernel is the "
                "forward op's HWIO kernel, (k_h, k_w, C_out / groups, C_in): TensorFlow's conv2d_transpose filters)",
                "kernel.shape",
            )
        return
    c_out = kernel_shape[-1]
    if kernel_shape[-2] * groups != c_in:
        raise fail(
            f"kernel in-channels {kernel_shape[-2]} x groups {groups} != input channels {c_in} "
            "(HWIO kernel: its third axis is C_in / groups)",
            "kernel.shape",
        )
    if c_out % groups:
        raise fail(f"kernel out-channels {c_out} is not divisible by groups {groups}", "groups")


def _output_padding(op: str, value: Any, padding: PaddingSpec, rate: Sizes, stride: Sizes, fail: Any) -> Sizes:
    """A conv_transpose's stated output_padding, checked: explicit pads only (SAME and VALID fix the
    output size), each axis below max(stride, rate) (`semantics.output_padding_limit`)."""
    extra = per_axis(value, len(rate))
    if not any(extra):
        return extra
    if op != CONV_TRANSPOSE:
        raise fail('output_padding belongs to op = "conv_transpose" only', "output_padding")
    if isinstance(padding, str):
        raise fail(
            f"{padding} fixes a transposed convolution's output size (TensorFlow's rule): state explicit pads "
            "(crops) to give output_padding",
            "output_padding",
        )
    for axis, (added, s, r) in enumerate(zip(extra, stride, rate, strict=True)):
        limit = output_padding_limit(s, r)
        if not 0 <= added < limit:
            raise fail(
                f"{added} along the {_axis_name(axis, len(extra))} is outside 0..{limit - 1}: it must be smaller "
                f"than the stride ({s}) or the rate ({r})",
                "output_padding",
            )
    return extra


def _axis_name(axis: int, rank: int) -> str:
    """A spatial axis as messages name it: the height and the width in 2-D (the depth before them in 3-D)."""
    names = ("depth", "height", "width")
    return names[axis - rank] if rank <= len(names) else f"spatial axis {axis}"


def _why_no_output(case: Case) -> str:
    if isinstance(case.geometry, TransposedGeometry):
        return f"the crops {case.geometry.pads} exceed the uncropped output {case.geometry.full_size}"
    return "the dilated kernel does not fit"


def _check_work_size(case: Case, fail: Any) -> None:
    """Refuse, before anything is allocated, a case whose padded input or output would be absurd
    (a 5x5 input with padding 20000 is two small tensors but a 1.6e9-element padded one)."""
    geo = case.geometry
    n, c_in = case.input_shape[0], case.input_shape[-1]
    if isinstance(geo, TransposedGeometry):  # what the scatter fills before it crops
        room = (
            max(full, before + o) for full, (before, _), o in zip(geo.full_size, geo.pads, geo.output_size, strict=True)
        )
        padded = n * math.prod(room) * case.output_channels
    else:
        padded = n * math.prod(geo.padded_size) * c_in
    output = n * math.prod(geo.output_size) * case.output_channels
    explicit = not isinstance(case.padding, str)
    for name, elements, field_name in (
        ("padded input", padded, "padding" if explicit else "input.shape"),
        ("output", output, "padding" if explicit else "kernel.shape"),
    ):
        if elements > MAX_TENSOR_ELEMENTS:
            raise fail(
                f"the {name} would have {elements} elements, beyond the limit of {MAX_TENSOR_ELEMENTS}", field_name
            )


def case_files(paths: list[Path]) -> Iterator[tuple[Path, Path]]:
    """(file, root) for every case file under the given files or directories, sorted."""
    for root in paths:
        if root.is_file():
            if root.name not in NON_CASE_FILES:
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
