"""A check's result record, and the reproduction it carries: the case's tensors as source, then the
framework's call. Every kind of check (a case's, a composite's, one that never ran) is written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from conformance import derivatives, profiles
from conformance.adapters.base import OUTPUT, Target
from conformance.cases import Case
from conformance.compare import CONFORMANT, NOT_RUN, Outcome, Verdict
from conformance.exception_text import exception_text
from conformance.judging import Prepared
from conformance.records import Record
from conformance.semantics import TransposedGeometry

# Outcomes that need no reproduction to act on. A large-tier record of one leaves its reproduction
# out (`lean`): 60% of such a record's bytes, in a tier of hundreds of thousands of them.
ROUTINE_OUTCOMES = CONFORMANT | NOT_RUN


def lean(record: Record, case: Case) -> Record:
    """A settled record (known divergences applied) without the reproduction a routine large-tier
    check does not need; `python -m conformance reproduce CASE TARGET DTYPE` writes it on demand."""
    if reproduction_deferred(case) and record["outcome"] in ROUTINE_OUTCOMES and record.get("reproduction"):
        record["reproduction"] = ""
    return record


def reproduction_deferred(case: Case) -> bool:
    """Whether a batch's check of the case makes its reproduction only once its outcome says the
    record keeps one (`wants_reproduction`): the large tier's, whose routine records leave it out
    (`lean`). Made before every call, it cost a tenth of such a check's harness work, for nothing."""
    return case.tier == "large"


def wants_reproduction(record: Record) -> bool:
    """Whether a record lacks a reproduction it keeps: its check called the framework (its data are
    hashed), made no reproduction first (`reproduction_deferred`), and its outcome is not routine:
    a failure, a known divergence, or a crash or timeout (the controller makes that one)."""
    return (
        not record.get("reproduction")
        and record.get("input_sha256") is not None
        and record["outcome"] not in ROUTINE_OUTCOMES
    )


HARNESS_FAILED = "the harness failed before a verdict"  # how a harness_error_record's message opens


def harness_error_record(case: Case, target: Target, dtype: str, exc: BaseException) -> Record:
    """The record of a check that the harness itself could not finish (e.g. the reference ran out
    of memory): reported as an error with the reason rather than lost."""
    return make_record(case, target, dtype, Verdict(Outcome.ERROR, f"{HARNESS_FAILED}: {exception_text(exc)}"))


def _profile() -> Record:
    """The machine profile the run's processes started with (conformance/profiles.py), unless the host's."""
    label = profiles.current()
    return {"profile": label} if label else {}


def _backend_version(target: Target) -> Record:
    """A front-end's record also names its backend's version (Keras 3 on JAX: JAX's)."""
    framework = target.adapter.framework
    return {"backend_version": framework.backend_version()} if framework.backend else {}


def make_record(
    case: Case,
    target: Target,
    dtype: str,
    verdict: Verdict,
    prepared: Prepared | None = None,
    reproduction: str = "",
    duration_s: float = 0.0,
    output_hash: str | None = None,
    tangents: derivatives.Tangents | None = None,
    planned: Record | None = None,
) -> Record:
    """A check's record. `planned`: the record a batch made of the check before running it (this
    function's, with a verdict to come), finished in place rather than made again."""
    record = _check_fields(case, target, dtype) if planned is None else planned
    if reproduction:
        record["reproduction"] = full_reproduction(case, dtype, reproduction, target.adapter.quantity, tangents)
    if prepared is not None:
        record["input_sha256"], record["kernel_sha256"] = prepared.data.x_hash, prepared.data.w_hash
    return judged(record, verdict, duration_s, output_hash)


def judged(record: Record, verdict: Verdict, duration_s: float = 0.0, output_hash: str | None = None) -> Record:
    """`record` (in place) with `verdict`, the check's duration and its output's hash: a check's one
    record, made before its framework call (`make_record`, for fault isolation), is finished here."""
    record.update(
        {
            "outcome": verdict.outcome.value,
            "got_shape": verdict.got_shape,
            "got_dtype": verdict.got_dtype,
            "exact": verdict.exact,
            "max_abs_error": verdict.max_abs_error,
            "max_rel_error": verdict.max_rel_error,
            "max_ulp": verdict.max_ulp,
            "error_ratio": verdict.error_ratio,
            "bounds": verdict.bounds,
            "worst": verdict.worst,
            "error_map": verdict.error_map,
            "message": verdict.message,
            "output_sha256": output_hash,
            "duration_s": round(duration_s, 6),
        }
    )
    return record


# Half a check's record is the case's, the target's and the dtype's alone: those fields are made once
# per case and once per target, and a record is the target's template (every field in the record's
# order, what the check fills in standing empty) updated with the case's (an update keeps each field
# where it stands). The large tier's replicates differ only in the case's fields. Records share their
# lists: nothing changes a record's lists in place.
def geometry_fields(case: Case) -> Record:
    """What a record states of the case's geometry, as the record writes it (tuples as lists): the
    fields that decide which program a framework builds (conformance/plugin/sharding.py keys on them)."""
    geo = case.geometry
    return {
        "input_shape": list(case.input_shape),
        "kernel_shape": list(case.kernel_shape),
        "rate": list(case.rate),
        "stride": list(case.stride),
        "padding": case.padding if isinstance(case.padding, (str, int)) else [list(p) for p in case.padding],
        "groups": case.groups,
        "operation": case.op,
        # (a transposed SAME or VALID derives its output padding: the geometry's is the one in effect)
        **({"output_padding": list(geo.output_padding)} if isinstance(geo, TransposedGeometry) else {}),
    }


def _check_fields(case: Case, target: Target, dtype: str) -> Record:
    """A new record of the check, every field in place, the verdict's empty."""
    fields = _case_fields(case)
    record = _target_template(target, dtype, "output_padding" in fields).copy()
    record.update(fields)
    return record


@lru_cache(maxsize=16)  # a batch's checks (its draws through its targets) run back to back
def _case_fields(case: Case) -> Record:
    # (in any order: the template's decides where each lands)
    return {
        "case": case.qualified_id,
        "case_file": case.file,
        **geometry_fields(case),
        "output_shape": list(case.output_shape),
        "pads": [list(p) for p in case.geometry.pads],
        "expect": "no-valid-output" if case.expects_no_output else case.expect_kind,
        "description": case.description,
        "tags": list(case.tags),
    }


@lru_cache(maxsize=512)
def _target_template(target: Target, dtype: str, output_padding: bool) -> Record:
    """The record's fields in order: the target's and dtype's filled in, the case's (`_case_fields`,
    with or without an output padding) and the verdict's empty (never changed: records are its copies)."""
    adapter = target.adapter
    return {
        "case": "",
        "case_file": "",
        "target": target.id,
        "framework": adapter.framework.name,
        "framework_version": adapter.version(),
        **_backend_version(target),
        **_profile(),
        "op": adapter.op,
        "variant": adapter.variant,
        "quantity": adapter.quantity,
        "baseline": adapter.baseline.name if adapter.baseline is not None else None,
        "device": target.device,
        "precision": target.precision,
        "dtype": dtype,
        "outcome": "",
        "input_shape": [],
        "kernel_shape": [],
        "output_shape": [],
        "got_shape": None,
        "got_dtype": None,
        "rate": [],
        "stride": [],
        "padding": "",
        "pads": [],
        "groups": 0,
        "operation": "",
        **({"output_padding": []} if output_padding else {}),
        "expect": "",
        "exact": False,
        "max_abs_error": None,
        "max_rel_error": None,
        "max_ulp": None,
        "error_ratio": None,
        "bounds": None,
        "worst": None,
        "error_map": None,
        "message": "",
        "reproduction": "",
        "input_sha256": None,
        "kernel_sha256": None,
        "output_sha256": None,
        "description": "",
        "tags": [],
        "duration_s": None,
    }


def full_reproduction(
    case: Case, dtype: str, call_source: str, quantity: str = OUTPUT, tangents: derivatives.Tangents | None = None
) -> str:
    """Copy-paste source: the case's tensors (inline when small) followed by the framework call;
    for a derivative, also its seeded cotangent dy (and the HVP direction vx, vw)."""
    return _tensors_source(case, dtype, quantity, tangents) + call_source


@lru_cache(maxsize=16)  # every target of a case shares it: a batch's checks run back to back
def _tensors_source(case: Case, dtype: str, quantity: str, tangents: derivatives.Tangents | None) -> str:
    lines = ["import numpy as np"]
    tensors: list[tuple[str, Mapping[str, Any], tuple[int, ...]]] = [
        ("x", case.input_spec, case.input_shape),
        ("w", case.kernel_spec, case.kernel_shape),
    ]
    if quantity != OUTPUT:
        assert tangents is not None, "a derivative's reproduction needs its tangents"
        names = ("dy", "vx", "vw") if quantity.startswith("hvp") else ("dy",)
        specs = tangents.specs
        tensors += [(name, *specs[name]) for name in names]
    for name, spec, shape in tensors:
        layout = "HWIO" if name in ("w", "vw") else "NHWC"
        lines.append(f"{name} = {_tensor_source(spec, shape)}  # {layout}")
    lines.append(f"# case {case.qualified_id} ({case.file}), dtype {dtype}")
    return "\n".join(lines) + "\n"


INLINE_LIMIT = 256  # elements; larger tensors are rebuilt from their generator spec


def _tensor_source(spec: Any, shape: tuple[int, ...]) -> str:
    if "file" in spec:
        return f"np.load({spec['file']!r})[{spec['key']!r}].astype(np.float64)"
    if "values" in spec:
        return f"np.array({_literal(spec['values'])}, dtype=np.float64)"
    kind = spec["generator"] if "set" not in spec else "set"  # special values set into a generated tensor
    if kind in ("ones", "zeros"):
        return f"np.{kind}({list(shape)}, dtype=np.float64)"
    if kind == "full":
        return f"np.full({list(shape)}, {spec['value']!r}, dtype=np.float64)"
    if kind == "arange":
        start, step = spec.get("start", 0), spec.get("step", 1)
        count = int(np.prod(shape))
        return f"({start!r} + {step!r} * np.arange({count}, dtype=np.float64)).reshape({list(shape)})"
    if int(np.prod(shape)) <= INLINE_LIMIT:
        from conformance.generators import generate

        return f"np.array({_literal(generate(spec, shape).tolist())}, dtype=np.float64)"
    spec_text = _literal({**spec})
    return (
        f"__import__('conformance.generators').generators.generate({spec_text}, {tuple(shape)})"
        "  # pip install this suite for the pinned generator"
    )


def _literal(values: Any) -> str:
    """Nested lists as Python source; NaN and infinities spelled so that they evaluate."""
    return repr(values).replace("nan", "float('nan')").replace("inf", "float('inf')")
