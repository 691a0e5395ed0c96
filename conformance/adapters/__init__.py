"""The targets under test: every adapter on every device and precision mode it may run in.

Importing this package imports no framework: each adapter loads its own on first use.
"""

from __future__ import annotations

from conformance.adapters import jax, keras, numpy, onnxruntime, pytorch, tensorflow
from conformance.adapters.base import (
    OUTPUT,
    QUANTITIES,
    Adapter,
    CallParams,
    CallWrapper,
    ConvCall,
    DerivativeAdapter,
    FrameworkCall,
    Target,
    Unavailable,
    Unsupported,
    Wrapper,
)
from conformance.adapters.modes import PRECISION_MODES

ADAPTERS: tuple[Adapter, ...] = (
    *numpy.ADAPTERS,
    *pytorch.ADAPTERS,
    *tensorflow.ADAPTERS,
    *jax.ADAPTERS,
    *onnxruntime.ADAPTERS,
    *keras.ADAPTERS,
)


def all_targets(adapters: tuple[Adapter, ...] = ADAPTERS) -> list[Target]:
    """CPU runs in strict mode only (no CPU path here uses TF32); GPUs run the plain calls and their
    derivatives in both modes, and the execution modes and oracles in strict mode (what they
    compare is the formulation, not the precision flags: TF32 on both sides would only widen the bound)."""
    targets = []
    for adapter in adapters:
        for device in adapter.devices:
            both = device == "gpu" and (not adapter.variant or adapter.quantity != OUTPUT)
            for precision in PRECISION_MODES if both else ("strict",):
                targets.append(Target(adapter, device, precision))
    return targets


__all__ = [
    "ADAPTERS",
    "OUTPUT",
    "QUANTITIES",
    "Adapter",
    "CallParams",
    "CallWrapper",
    "ConvCall",
    "DerivativeAdapter",
    "FrameworkCall",
    "Target",
    "Unavailable",
    "Unsupported",
    "Wrapper",
    "all_targets",
]
