"""Composite checks: a composite (conformance/composites.py) through one target, layer by layer with
each convolution the framework's, or as one model of its own where the adapter `runs_models`,
judged bit for bit against the exact result.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from conformance import timing
from conformance.adapters.base import CallParams, ConvCall, Target
from conformance.cases import Case
from conformance.check_records import make_record
from conformance.compare import Outcome, Verdict
from conformance.composites import (
    Composite,
    Conv,
    LayerByLayer,
    build,
    composite_input,
    coverage_map,
    field_facts,
    reference_conv,
)
from conformance.dtypes import float_format
from conformance.exception_text import exception_text
from conformance.records import Record
from conformance.refusals import REFUSALS, Unsupported, refusal_verdict
from conformance.semantics import geometry


def framework_conv(
    target: Target, dtype: str, before_first_call: Callable[[str], None] | None = None
) -> tuple[Conv, list[str]]:
    """A SAME, stride-1 convolution through the target's adapter; raises `Unsupported` with the
    adapter's reason when it cannot express a layer. Also collects each call's reproduction, and
    hands the first one to `before_first_call` right before the framework first runs."""
    adapter = target.adapter
    sources: list[str] = []

    def conv(x: np.ndarray, w: np.ndarray, rate: int) -> np.ndarray:
        geo = geometry("SAME", x.shape[1:3], w.shape[:2], (rate, rate), (1, 1))
        params = CallParams(x.shape, w.shape, (rate, rate), (1, 1), "SAME", geo, 1, dtype)
        reason = adapter.unsupported_reason(params)
        if reason:
            raise Unsupported(f"a layer is not expressible: {reason}")
        numpy_dtype = float_format(dtype).numpy_dtype
        call = ConvCall(x.astype(numpy_dtype), w.astype(numpy_dtype), (rate, rate), (1, 1), "SAME", geo, 1, dtype)
        sources.append(adapter.reproduction(call, target.device, target.precision))
        if len(sources) == 1 and before_first_call is not None:
            before_first_call(sources[0])
        with timing.spent(timing.FRAMEWORK):
            out = adapter.run(call, target.device, target.precision)
        return np.asarray(_in_dtype(out, dtype), dtype=np.float64)

    return conv, sources


class WrongDtype(Exception):
    """A layer (or the whole model) answered in another dtype than the composite's."""


def _in_dtype(out: np.ndarray, dtype: str) -> np.ndarray:
    out, want = np.asarray(out), float_format(dtype).numpy_dtype
    if out.dtype != want:
        raise WrongDtype(f"output dtype {out.dtype.name}, expected {want.name}")
    return out


def run_check(
    composite: Composite,
    case: Case,
    target: Target,
    dtype: str,
    before_call: Callable[[Record], None] | None = None,
    after_load: Callable[[], None] | None = None,
) -> Record:
    """One composite through one target: a result record like any check's (outcome, message,
    reproduction), with the receptive field's picture for stacks. `before_call` and `after_load`
    are the fault isolation's hooks, as for `runner.run_check`."""
    spent_before = timing.totals()
    record = _run_check(composite, case, target, dtype, before_call, after_load)
    record.update(timing.since(spent_before))
    return record


def _run_check(
    composite: Composite,
    case: Case,
    target: Target,
    dtype: str,
    before_call: Callable[[Record], None] | None,
    after_load: Callable[[], None] | None,
) -> Record:
    def before_first_call(source: str) -> None:
        if before_call is not None:
            crashed = Verdict(Outcome.CRASH, "the process died during a framework call of the composite")
            before_call(make_record(case, target, dtype, crashed, reproduction=source))

    adapter = target.adapter
    conv, sources = framework_conv(target, dtype, before_first_call)
    picture = None
    try:
        with timing.spent(timing.LOAD):
            adapter.check_available(target.device)
        if after_load is not None:
            after_load()
        x = composite_input(composite)
        exact = build(composite, LayerByLayer(reference_conv), x)
        if adapter.runs_models:  # the whole composite as one model of the framework's own
            sources.append(adapter.model_reproduction(composite, dtype, target.device, target.precision))
            before_first_call(sources[0])
            with timing.spent(timing.FRAMEWORK):
                answer = adapter.run_model(composite, dtype, target.device, target.precision)
            got = np.asarray(_in_dtype(answer, dtype), np.float64)
        else:
            got = build(composite, LayerByLayer(conv), x)
        if composite.kind == "stack":
            exact, got = exact[0, :, :, 0], got[0, :, :, 0]
            picture = coverage_map(got)
    except REFUSALS as exc:
        return make_record(case, target, dtype, refusal_verdict(exc))
    except WrongDtype as exc:
        return make_record(
            case, target, dtype, Verdict(Outcome.SHAPE, str(exc)), reproduction=sources[0] if sources else ""
        )
    except Exception as exc:
        raised = Verdict(Outcome.ERROR, f"raised {exception_text(exc)}")
        return make_record(case, target, dtype, raised, reproduction=sources[0] if sources else "")
    if got.shape != exact.shape:
        shape = Verdict(Outcome.SHAPE, f"output shape {list(got.shape)}, expected {list(exact.shape)}")
        return make_record(case, target, dtype, shape, reproduction=sources[0] if sources else "")
    differs = got != exact
    if differs.any():
        index = [int(i) for i in np.argwhere(differs)[0]]
        message = (
            f"{int(differs.sum())} of {differs.size} values differ from the exact result (all are exact integers "
            f"or dyadic fractions here); first at {index}: expected {exact[tuple(index)]!r}, got {got[tuple(index)]!r}"
        )
        verdict = Verdict(Outcome.MISMATCH, message, exact=True, max_abs_error=float(np.abs(got - exact).max()))
    elif composite.kind == "stack":
        side, holes = field_facts(got)
        verdict = Verdict(
            Outcome.PASS,
            f"receptive field {side}x{side}, "
            + ("with holes (gridding)" if holes else "no holes")
            + f"; the documents say {composite.receptive_field}x{composite.receptive_field}"
            + (", with holes" if composite.holes else ", no holes"),
            exact=True,
        )
    else:
        head = "the ASPP head" if composite.kind == "aspp" else "the U-Net bottleneck"
        verdict = Verdict(Outcome.PASS, f"bit-exact over {got.size} outputs of {head}", exact=True)
    verdict.error_map = picture
    note = f"# {composite.kind} {composite.id}: {len(sources)} framework calls; the first is below"
    if adapter.runs_models:
        note = f"# {composite.kind} {composite.id}: the whole composite as one model"
    record = make_record(case, target, dtype, verdict, reproduction=f"{note}\n{sources[0]}" if sources else "")
    return record
