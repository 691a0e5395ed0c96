"""The interface every framework adapter implements.

An adapter turns one canonical call (NHWC input, HWIO kernel, NumPy arrays in the case dtype)
into its framework's own API call and hands back an NHWC NumPy array of the framework's output
dtype. It imports its framework lazily, on first use, so collecting tests costs no imports and a
missing framework only skips that framework's items.

Built-in adapters are `DescribedAdapter`s: they describe each call once, as a `Program`
(conformance/adapters/program.py), which both runs and prints as the reproduction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from conformance import cost
from conformance.adapters.modes import DEVICES
from conformance.adapters.program import Name, Program, Statement, Value
from conformance.frameworks import Framework
from conformance.machine import FactValue

# What adapters raise, re-exported so an adapter imports its whole contract from here.
from conformance.refusals import ProcessDied as ProcessDied
from conformance.refusals import Unavailable as Unavailable
from conformance.refusals import Unsupported as Unsupported
from conformance.semantics import CONV, AnyGeometry, PaddingSpec, Sizes


@dataclass(frozen=True)
class CallParams:
    """The static part of a call: enough to decide support without any data."""

    input_shape: tuple[int, ...]  # (N, *spatial, C)
    kernel_shape: tuple[int, ...]  # (*spatial, C_in / groups, C_out)
    rate: Sizes
    stride: Sizes
    padding: PaddingSpec
    geometry: AnyGeometry
    groups: int
    dtype: str


@dataclass(frozen=True)
class ConvCall:
    x: np.ndarray  # channels last (N, *spatial, C), case dtype
    w: np.ndarray  # (*spatial, C_in / groups, C_out), case dtype
    rate: Sizes
    stride: Sizes
    padding: PaddingSpec  # as the case states it: adapters use native SAME/VALID where they have them
    geometry: AnyGeometry  # the resolved pads (a transposed op's crops and output_padding), for adapters that need them
    groups: int
    dtype: str
    # Derivative targets only (see conformance.derivatives): the cotangent dy (NHWC, the output's
    # shape) and the Hessian-vector product's direction (vx NHWC, vw HWIO), in the case dtype.
    cotangent: np.ndarray | None = None
    direction_input: np.ndarray | None = None
    direction_kernel: np.ndarray | None = None

    def bindings(self) -> dict[str, np.ndarray]:
        """The tensors a program starts from, named as its reproduction names them: float64, as
        the reproduction builds them (every case value is exact in float64), each rounded to the
        case dtype by the framework's own cast."""
        tensors = {"x": self.x, "w": self.w, "dy": self.cotangent, "vx": self.direction_input}
        tensors["vw"] = self.direction_kernel
        return {name: array.astype(np.float64) for name, array in tensors.items() if array is not None}


OUTPUT = "output"  # what a forward target computes
# What a derivative target computes -> the derivative order a case opts into to get it.
QUANTITIES = {"grad-input": 1, "grad-kernel": 1, "hvp-input": 2, "hvp-kernel": 2}


class Adapter(ABC):
    framework: Framework  # the framework's record (conformance/frameworks.py)
    op: str  # the API under test, in the framework's own name: "conv2d", "atrous_conv2d", "Conv"
    # The operation it computes (conformance.semantics.OPERATIONS): only cases of that op reach it.
    operation = CONV
    devices: tuple[str, ...] = DEVICES
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
    # Runs a composite (conformance/composites.py) as one model of its framework's own, not layer by
    # layer: such a target implements `run_model` and `model_reproduction`.
    runs_models = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        stated = cls.__dict__.get("framework")
        if stated is not None and not isinstance(stated, Framework):  # the form before frameworks had records
            raise TypeError(
                f"{cls.__qualname__}.framework is {stated!r}: it must be a conformance.frameworks.Framework record, "
                f'e.g. Framework("{stated}", "{stated} builds")'
            )

    @property
    def name(self) -> str:
        return f"{self.framework.name}.{self.op}" + (f"@{self.variant}" if self.variant else "")

    def version(self) -> str | None:
        """The installed framework version, from package metadata (no import, so skips know it too)."""
        return self.framework.version()

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        """Why this API cannot express the case (decided without importing anything), or None."""
        return None

    def memory_estimate(self, call_params: CallParams) -> list[cost.Part]:
        """What this formulation allocates at its peak, from the shapes alone (conformance/cost.py)."""
        return cost.framework_call(cost.Shapes.of(call_params))

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

    def runtime_facts(self) -> dict[str, FactValue]:
        """What the loaded framework reports about the process it runs in, that a known divergence
        may be conditioned on (`runtime` in expectations.toml): a library really in use, which an
        environment variable only requests. Read after the framework is loaded; each record carries it."""
        return {}

    def run_model(self, composite: Any, dtype: str, device: str, precision: str) -> np.ndarray:
        """(Where `runs_models`.) The composite's output, computed as one model of the framework."""
        raise NotImplementedError(f"{self.name} runs composites layer by layer")

    def model_reproduction(self, composite: Any, dtype: str, device: str, precision: str) -> str:
        """(Where `runs_models`.) Python source that builds and runs that model."""
        raise NotImplementedError(f"{self.name} runs composites layer by layer")


class DescribedAdapter(Adapter):
    """An adapter whose call is described once (`describe`): `run` interprets the description and
    `reproduction` prints it, so the two cannot disagree."""

    @abstractmethod
    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        """The statements that compute `y`, the answer (NHWC; HWIO for a kernel gradient)."""

    @abstractmethod
    def to_numpy(self, value: Any) -> np.ndarray:
        """The program's result as a NumPy array in the framework's output dtype (see modes.numpy_output)."""

    def kernel(self, call: ConvCall) -> Value:
        """The HWIO kernel the program starts from (an oracle may transform `w`)."""
        return Name("w")

    def kernel_imports(self, call: ConvCall) -> list[Statement]:
        """What `kernel` needs imported; it may also refuse the data (`Unsupported`)."""
        return []

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        return self.to_numpy(self.describe(call, device, precision).run(call.bindings()))

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return self.describe(call, device, precision).source()


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
        self.framework, self.op, self.devices = primary.framework, primary.op, primary.devices
        self.operation = primary.operation

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

    def memory_estimate(self, call_params: CallParams) -> list[cost.Part]:
        return cost.derivative_call(cost.Shapes.of(call_params), self.order)

    def check_available(self, device: str) -> None:
        self.primary.check_available(device)

    def to_numpy(self, value: Any) -> np.ndarray:
        """(For a described derivative: the primary's conversion, which knows the framework's tensors.)"""
        assert isinstance(self.primary, DescribedAdapter)
        return self.primary.to_numpy(value)

    def environment(self) -> dict[str, Any]:
        return self.primary.environment()

    def runtime_facts(self) -> dict[str, FactValue]:
        return self.primary.runtime_facts()


class DeviceComparison(Adapter):
    """The primary call on the GPU judged against the same call on the CPU, same data, strict mode
    (within twice the bound; bit for bit on exact-integer data): a per-framework CPU-versus-GPU
    comparison that holds even where both differ from the reference."""

    variant = "vs-cpu"
    devices = ("gpu",)

    def __init__(self, primary: Adapter) -> None:
        self.primary = self.baseline = primary
        self.baseline_device = "cpu"
        self.framework, self.op, self.operation = primary.framework, primary.op, primary.operation

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

    def runtime_facts(self) -> dict[str, FactValue]:
        return self.primary.runtime_facts()


@dataclass(frozen=True)
class Target:
    adapter: Adapter
    device: str
    precision: str

    @property
    def id(self) -> str:
        suffix = "" if self.precision == "strict" else f"-{self.precision}"
        return f"{self.adapter.name}-{self.device}{suffix}"
