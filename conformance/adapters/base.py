"""The interface every framework adapter implements.

An adapter turns one canonical call (NHWC input, HWIO kernel, NumPy arrays in the case dtype)
into its framework's own API call and hands back an NHWC NumPy array of the framework's output
dtype. It imports its framework lazily, on first use, so collecting tests costs no imports and a
missing framework only skips that framework's items.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from conformance.semantics import Geometry, PaddingSpec

DEVICES = ("cpu", "gpu")
# Device nodes a GPU driver creates (NVIDIA, AMD ROCm, WSL2). Where none exists no framework can
# reach a GPU, which the harness can tell without importing one (see `no_gpu_reason`).
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
# strict: TF32 and reduced-precision reductions off; defaults: whatever the framework does out of the box.
PRECISION_MODES = ("strict", "defaults")


def no_gpu_reason() -> str | None:
    """Why no GPU target can run on this machine, or None when a GPU driver is present."""
    if any(Path(node).exists() for node in GPU_DEVICE_NODES):
        return None
    return f"no GPU on this machine (none of {', '.join(GPU_DEVICE_NODES)} exists)"


@cache
def installed_version(distributions: tuple[str, ...]) -> str | None:
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


@dataclass(frozen=True)
class ConvCall:
    x: np.ndarray  # NHWC, case dtype
    w: np.ndarray  # HWIO, case dtype
    rate: tuple[int, int]
    stride: tuple[int, int]
    padding: PaddingSpec  # as the case states it: adapters use native SAME/VALID where they have them
    geometry: Geometry  # the resolved pads, for adapters that need explicit ones
    groups: int
    dtype: str
    # Derivative targets only (see conformance.derivatives): the cotangent dy (NHWC, the output's
    # shape) and the Hessian-vector product's direction (vx NHWC, vw HWIO), in the case dtype.
    cotangent: np.ndarray | None = None
    direction_input: np.ndarray | None = None
    direction_kernel: np.ndarray | None = None


OUTPUT = "output"  # what a forward target computes
# What a derivative target computes -> the derivative order a case opts into to get it.
QUANTITIES = {"grad-input": 1, "grad-kernel": 1, "hvp-input": 2, "hvp-kernel": 2}


class Unavailable(Exception):
    """The framework or device is not present here: the item is skipped with this reason."""


class Unsupported(Exception):
    """Raised by `run` when only the data shows that this formulation cannot express the case
    (e.g. a zero-inserted kernel with infinite input, where inf * 0 is NaN): `unsupported`."""


class Adapter(ABC):
    framework: str  # "torch", "tensorflow", "jax", "numpy"
    op: str  # the API under test, e.g. "conv2d", "atrous_conv2d"
    devices: tuple[str, ...] = DEVICES
    distributions: tuple[str, ...] = ()  # pip names that provide the framework, first installed wins
    # An execution mode ("function", "jit", "layer", "onednn-off") or an equivalence oracle
    # ("zero-inserted", "nchw", ...); empty for the plain eager call.
    variant: str = ""
    # Equivalence oracles only: the framework's own primary formulation, which this one must equal.
    # Such a target is judged against that adapter's output, not against the reference.
    baseline: Adapter | None = None
    baseline_device: str | None = None  # where the baseline runs, when not on this target's device
    own_environment = False  # runs in its own process with its own settings: recorded separately
    # "output" (the forward result) or a derivative of it, one of QUANTITIES.
    quantity = OUTPUT

    @property
    def name(self) -> str:
        return f"{self.framework}.{self.op}" + (f"@{self.variant}" if self.variant else "")

    def version(self) -> str | None:
        """The installed framework version, from package metadata (no import, so skips know it too)."""
        return installed_version(self.distributions)

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        """Why this API cannot express the case (decided without importing anything), or None."""
        return None

    @abstractmethod
    def check_available(self, device: str) -> None:
        """Raise `Unavailable` with a reason if the framework or device is missing."""

    @abstractmethod
    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        """The framework's output, as an NHWC NumPy array in the framework's output dtype."""

    @abstractmethod
    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        """Python source that repeats the call with the framework's own API (after `x`, `w` exist)."""

    @abstractmethod
    def environment(self) -> dict[str, Any]:
        """Versions, devices and precision flags, read at run time (only after the framework is loaded)."""


class DerivativeAdapter(Adapter):
    """A derivative of a framework's primary call, by the framework's own autodiff: the gradient
    of <conv(x, w), dy> with respect to the input or the kernel (`grad-*`), or its Hessian-vector
    product taken through that gradient (`hvp-*`). The variant names the quantity, so every
    report, diff and expectation treats it as a column of its own."""

    def __init__(self, primary: Adapter, quantity: str) -> None:
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown derivative {quantity!r}; one of {sorted(QUANTITIES)}")
        self.primary = primary
        self.quantity = self.variant = quantity
        self.framework, self.op = primary.framework, primary.op
        self.distributions, self.devices = primary.distributions, primary.devices

    @property
    def order(self) -> int:
        return QUANTITIES[self.quantity]

    @property
    def with_respect_to(self) -> str:
        return self.quantity.split("-")[1]  # "input" or "kernel"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        reason = self.primary.unsupported_reason(call_params)
        if reason is None and not call_params.geometry.has_valid_output:
            reason = "no valid output: there is nothing to differentiate"
        return reason

    def check_available(self, device: str) -> None:
        self.primary.check_available(device)

    def environment(self) -> dict[str, Any]:
        return self.primary.environment()


class DeviceComparison(Adapter):
    """The primary call on the GPU judged against the same call on the CPU, same data, strict mode
    (within twice the bound; bit for bit on exact-integer data): a per-framework CPU-versus-GPU
    comparison that holds even where both differ from the reference."""

    variant = "vs-cpu"
    devices = ("gpu",)

    def __init__(self, primary: Adapter) -> None:
        self.primary = self.baseline = primary
        self.baseline_device = "cpu"
        self.framework, self.op, self.distributions = primary.framework, primary.op, primary.distributions

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return self.primary.unsupported_reason(call_params)

    def check_available(self, device: str) -> None:
        self.primary.check_available(device)
        self.primary.check_available("cpu")

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        return self.primary.run(call, device, precision)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        gpu = self.primary.reproduction(call, device, precision)
        cpu = self.primary.reproduction(call, "cpu", precision)
        return f"{cpu}\ny_cpu = y\n{gpu}\n# compare y (GPU) with y_cpu"

    def environment(self) -> dict[str, Any]:
        return self.primary.environment()


@dataclass(frozen=True)
class CallParams:
    """The static part of a call: enough to decide support without any data."""

    input_shape: tuple[int, int, int, int]
    kernel_shape: tuple[int, int, int, int]
    rate: tuple[int, int]
    stride: tuple[int, int]
    padding: PaddingSpec
    geometry: Geometry
    groups: int
    dtype: str


@dataclass(frozen=True)
class Target:
    adapter: Adapter
    device: str
    precision: str

    @property
    def id(self) -> str:
        suffix = "" if self.precision == "strict" else f"-{self.precision}"
        return f"{self.adapter.name}-{self.device}{suffix}"


def zero_inserted_kernel(w: np.ndarray, rate: tuple[int, int]) -> np.ndarray:
    """The HWIO kernel with rate-1 zeros between taps: an ordinary (rate 1) convolution with it
    is the dilated convolution, which is how the reference documents define atrous convolution."""
    k_h, k_w = w.shape[:2]
    span = ((k_h - 1) * rate[0] + 1, (k_w - 1) * rate[1] + 1)
    dilated = np.zeros((*span, *w.shape[2:]), dtype=w.dtype)
    dilated[:: rate[0], :: rate[1]] = w
    return dilated


def require_finite(call: ConvCall, why: str) -> None:
    if not (np.isfinite(call.x.astype(np.float64)).all() and np.isfinite(call.w.astype(np.float64)).all()):
        raise Unsupported(f"non-finite data: {why}")


INSERTED_ZEROS = "inf * an inserted zero is NaN where the dilated convolution never multiplies them"


def pads_text(geometry: Geometry) -> str:
    return repr([list(geometry.pads[0]), list(geometry.pads[1])])
