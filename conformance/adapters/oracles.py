"""What the equivalence oracles share across frameworks: the kernel with inserted zeros, and when
an oracle applies at all. Each framework's module says how its own API runs them.

- zero-inserted: rate 1 with a kernel whose taps are spread out by explicit zeros. That is how the
  reference documents define atrous convolution, and a path through the framework that never sees
  a dilation argument.
- explicit-pads: SAME written out as the pads of DESIGN.md, which `conformance.semantics` computes.
- another layout (NCHW, channels_last): the same call through another kernel family.
"""

from __future__ import annotations

import numpy as np

from conformance.adapters.base import CallParams, ConvCall, Unsupported

ZERO_INSERTED = "zero-inserted"
EXPLICIT_PADS = "explicit-pads"


def zero_inserted_kernel(w: np.ndarray, rate: tuple[int, int]) -> np.ndarray:
    """The HWIO kernel with rate-1 zeros between taps: an ordinary (rate 1) convolution with it
    is the dilated convolution."""
    k_h, k_w = w.shape[:2]
    span = ((k_h - 1) * rate[0] + 1, (k_w - 1) * rate[1] + 1)
    dilated = np.zeros((*span, *w.shape[2:]), dtype=w.dtype)
    dilated[:: rate[0], :: rate[1]] = w
    return dilated


def require_finite_for_zero_insertion(call: ConvCall) -> None:
    """inf * an inserted zero is NaN where the dilated convolution never multiplies them: such data
    cannot tell the two formulations apart, so the oracle does not apply."""
    if not (np.isfinite(call.x.astype(np.float64)).all() and np.isfinite(call.w.astype(np.float64)).all()):
        raise Unsupported(
            "non-finite data: inf * an inserted zero is NaN where the dilated convolution never multiplies them"
        )


def explicit_pads_reason(params: CallParams) -> str | None:
    """The explicit-pads oracle checks a framework's SAME; other paddings are explicit already."""
    return None if params.padding == "SAME" else "the SAME-equals-explicit-pads oracle applies to SAME cases only"
