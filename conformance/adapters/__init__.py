"""The targets under test: every adapter on every device and precision mode it may run in.

Importing this package imports no framework: each adapter loads its own on first use.
"""

from __future__ import annotations

from conformance.adapters import jax, numpy, pytorch, tensorflow
from conformance.adapters.base import (
    PRECISION_MODES,
    Adapter,
    CallParams,
    ConvCall,
    Target,
    Unavailable,
    Unsupported,
)

ADAPTERS: tuple[Adapter, ...] = (
    *numpy.ADAPTERS,
    *pytorch.ADAPTERS,
    *tensorflow.ADAPTERS,
    *jax.ADAPTERS,
)


def all_targets(adapters: tuple[Adapter, ...] = ADAPTERS) -> list[Target]:
    """CPU runs in strict mode only (no CPU path here uses TF32); GPUs run in both modes."""
    targets = []
    for adapter in adapters:
        for device in adapter.devices:
            for precision in PRECISION_MODES if device == "gpu" else ("strict",):
                targets.append(Target(adapter, device, precision))
    return targets


__all__ = ["ADAPTERS", "Adapter", "CallParams", "ConvCall", "Target", "Unavailable", "Unsupported", "all_targets"]
