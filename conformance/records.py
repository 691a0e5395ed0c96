"""The result record: what one check (case x target x dtype) says, in JSON's builtin types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict


class Record(TypedDict, total=False):
    """One result record, as docs/results-format.md describes it: JSON's builtin types only (it
    crosses processes on pytest reports). Keys after `duration_s` appear only where they apply."""

    case: str
    case_file: str
    target: str
    framework: str
    framework_version: str | None
    backend_version: str | None  # front-ends only (Keras 3): the version of the framework it runs on
    profile: str  # the machine profile it ran under (conformance/profiles.py); absent: the host's defaults
    op: str
    variant: str
    quantity: str
    baseline: str | None
    device: str
    precision: str
    dtype: str
    outcome: str
    input_shape: list[int]
    kernel_shape: list[int]
    output_shape: list[int]
    got_shape: list[int] | None
    got_dtype: str | None
    rate: list[int]
    stride: list[int]
    padding: str | int | list[list[int]]
    pads: list[list[int]]
    groups: int
    operation: str  # "conv" or "conv_transpose" (the case's op; older files say "conv2d", or lack it: conv)
    output_padding: list[int]  # conv_transpose only
    expect: str
    exact: bool
    max_abs_error: float | None
    max_rel_error: float | None
    max_ulp: float | None
    error_ratio: float | None  # against the tightest bound that judged: the contract's where one is stated
    # Each bound that judged the values: {"dtype": {kind, ratio}, "contract": {id, accumulation, kind, ratio}};
    # kind is "worst-case" or "probabilistic" (compare.py). None for exact checks and checks without values.
    bounds: dict[str, dict[str, Any]] | None
    worst: dict[str, Any] | None
    error_map: dict[str, Any] | None
    message: str
    reproduction: str
    input_sha256: str | None
    kernel_sha256: str | None
    output_sha256: str | None
    description: str
    tags: list[str]
    duration_s: float | None
    load_s: float
    framework_s: float
    reference_s: float
    observed_outcome: str  # xfail/xpass: what the target did before a known divergence relabelled it
    expectation: dict[str, Any]  # the matching known divergence {id, reason, link, strict}
    near_miss: dict[str, Any]  # a failure no entry excused: {id, unmet} of the first entry that names this check
    runtime: dict[str, Any]  # facts the framework reported in the process that computed it (e.g. onednn_enabled)
    warnings: list[dict[str, Any]]  # framework warnings during the check: {category, where, message}, each once
    run: int  # merged files: index into `runs`


def edition(record: Mapping[str, Any]) -> str:
    """What tells the same check's records apart in a merged file: the framework version, and the
    machine profile it ran under where that is not the host's ("2.21.0 [onednn-off]")."""
    version = str(record.get("framework_version") or "")
    profile = record.get("profile")
    return f"{version} [{profile}]" if profile else version


def output_identity(record: Mapping[str, Any]) -> str | None:
    """The output's bits, as runs, shards and versions compare them (`output_sha256`), or None where
    they are not a function of the inputs: where no valid output exists, whatever a target returns
    is not an answer to anything (TensorFlow under oneDNN returns uninitialised memory there, other
    bits on every run). Its outcome is still compared."""
    if record.get("expect") == "no-valid-output":
        return None
    found = record.get("output_sha256")
    return str(found) if found else None


def observed(record: Mapping[str, Any]) -> str:
    """What the target did, before known divergences relabel it (xfail/xpass)."""
    return str(record.get("observed_outcome") or record["outcome"])
