"""The interface every framework adapter implements.

An adapter turns one canonical call (channels-last input (N, *spatial, C), (*spatial, I, O) kernel:
NHWC and HWIO in 2-D; NumPy arrays in the case dtype) into its framework's own API call and hands
back a channels-last NumPy array of the framework's output dtype. It states the ranks its API takes
(`ranks`): only cases of those reach it. It imports its framework lazily, on first use, so collecting
tests costs no imports and a missing framework only skips that framework's items.

Built-in adapters are `FrameworkCall`s: every framework module implements the same few hooks
(its tensors in its layout, its call, how it reads back), and each call is assembled from them
once, as a `Program` (conformance/adapters/program.py) that both runs and prints as the
reproduction. Execution modes, oracles, derivatives, device comparisons and child processes are
`Wrapper`s around those calls.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from conformance import cost, held_memory
from conformance.adapters.modes import DEVICES
from conformance.adapters.program import Assign, Expr, Name, Program, Statement
from conformance.composites import Composite
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

    def signature(self) -> tuple[Any, ...]:
        """Everything about the call but its tensors' values: what a program may depend on (it reads the
        values only through `bindings`). Every field takes part, so a field added later is not missed."""
        return tuple(
            (value.shape, value.dtype.str) if isinstance(value, np.ndarray) else value
            for value in map(self.__getattribute__, _CALL_FIELDS)
        )

    def bindings(self) -> dict[str, np.ndarray]:
        """The tensors a program starts from, named as its reproduction names them: float64, as
        the reproduction builds them (every case value is exact in float64), each rounded to the
        case dtype by the framework's own cast."""
        tensors = {"x": self.x, "w": self.w, "dy": self.cotangent, "vx": self.direction_input}
        tensors["vw"] = self.direction_kernel
        return {name: array.astype(np.float64) for name, array in tensors.items() if array is not None}


# (Once: `fields` walks the class on every call, and every check asks for a signature.)
_CALL_FIELDS = tuple(f.name for f in fields(ConvCall))

OUTPUT = "output"  # what a forward target computes
# What a derivative target computes -> the derivative order a case opts into to get it.
QUANTITIES = {"grad-input": 1, "grad-kernel": 1, "hvp-input": 2, "hvp-kernel": 2}


class Adapter(ABC):
    framework: Framework  # the framework's record (conformance/frameworks.py)
    op: str  # the API under test, in the framework's own name: "conv2d", "atrous_conv2d", "Conv"
    # The operation it computes (conformance.semantics.OPERATIONS): only cases of that op reach it.
    operation = CONV
    # How many spatial axes its API takes (conv2d: 2); only cases of that rank reach it.
    ranks: tuple[int, ...] = (2,)
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

    def mismatch(self, operation: str, rank: int) -> str | None:
        """Why this target does not compute a case of this operation and rank, or None when it does."""
        if operation != self.operation:
            return f"{self.name} computes {self.operation}; this case is {operation}"
        if rank not in self.ranks:
            return f"{self.name} takes {' or '.join(map(str, self.ranks))} spatial axes; this case has {rank}"
        return None

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

    def run_model(self, composite: Composite, dtype: str, device: str, precision: str) -> np.ndarray:
        """(Where `runs_models`.) The composite's output, computed as one model of the framework."""
        raise NotImplementedError(f"{self.name} runs composites layer by layer")

    def model_reproduction(self, composite: Composite, dtype: str, device: str, precision: str) -> str:
        """(Where `runs_models`.) Python source that builds and runs that model."""
        raise NotImplementedError(f"{self.name} runs composites layer by layer")


class Wrapper(Adapter):
    """A target made of another adapter, `inner`, in another setting: an execution mode, an
    equivalence oracle, a derivative, a device comparison, another process. It is `inner`'s
    framework, API and operation, and asks `inner` whatever it does not change."""

    def __init__(self, inner: Adapter, variant: str | None = None) -> None:
        self.inner = inner
        self.framework, self.op, self.operation = inner.framework, inner.op, inner.operation
        self.ranks, self.devices, self.quantity = inner.ranks, inner.devices, inner.quantity
        self.variant = inner.variant if variant is None else variant

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return self.inner.unsupported_reason(call_params)

    def memory_estimate(self, call_params: CallParams) -> list[cost.Part]:
        return self.inner.memory_estimate(call_params)

    def check_available(self, device: str) -> None:
        self.inner.check_available(device)

    def environment(self) -> dict[str, Any]:
        return self.inner.environment()

    def runtime_facts(self) -> dict[str, FactValue]:
        return self.inner.runtime_facts()


# Programs of recent calls, by adapter (hashed by identity) and call signature: small; a batch's
# checks run back to back, so the oldest go first.
_programs: OrderedDict[tuple[Any, ...], Program] = OrderedDict()
PROGRAMS_KEPT = 1024


# The program of the call whose reproduction was last asked for, until it runs: by the identity of
# its adapter and call.
_last_program: list[tuple[Adapter, ConvCall, str, str, Program] | None] = [None]


@held_memory.on_release
def forget_programs() -> None:
    _programs.clear()
    _last_program[0] = None


class FrameworkCall(Adapter):
    """One API of one framework, stated through the hooks every framework module implements alike
    (the names a program binds are the same everywhere: the input `x_t` and kernel `w_t` in the API's
    layout, the answer `y`, channels last):

    - `prelude(device, precision)`: imports, and the precision mode's flags;
    - `tensors(call, kernel, device, precision)`: `x_t` and `w_t` from the case's float64 `x` and the
      HWIO kernel expression `kernel`, cast, laid out and placed as the API takes them (and what else
      the call needs: a built layer, a session);
    - `invocation(call, precision)`: the API's call on them, in the precision mode;
    - `read_back(call, result)`: that result in the suite's layout (channels last);
    - `placed(device, statements)`: statements under the framework's device scope, where it has one;
    - `to_numpy(value)`: the answer as NumPy, in the framework's output dtype.

    The program is assembled from them once, here (`describe`), so it runs and prints as the same
    statements (conformance/adapters/program.py). Execution modes and oracles are `CallWrapper`s
    that change one hook; derivatives are wrappers that differentiate `invocation`.
    """

    @abstractmethod
    def prelude(self, device: str, precision: str) -> list[Statement]: ...

    @abstractmethod
    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]: ...

    @abstractmethod
    def invocation(self, call: ConvCall, precision: str) -> Expr: ...

    def read_back(self, call: ConvCall, result: Expr) -> Expr:
        return result

    def placed(self, device: str, statements: list[Statement]) -> list[Statement]:
        return statements

    @abstractmethod
    def to_numpy(self, value: Any) -> np.ndarray: ...

    def kernel(self, call: ConvCall) -> Expr:
        """The HWIO kernel the program starts from (an oracle may transform `w`)."""
        return Name("w")

    def kernel_imports(self, call: ConvCall) -> list[Statement]:
        """What `kernel` needs imported. (A description never reads the data: `refuse` refuses data.)"""
        return []

    def refuse(self, call: ConvCall) -> None:
        """Raise `Unsupported` where the framework itself refuses the call's settings, or the data
        (`program` is shared by calls of one signature), before running anything (asked where the
        framework is loaded, right before the call)."""

    def execution(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        """From the tensors to `y`: the call, eagerly (an execution mode runs it otherwise)."""
        return [Assign("y", self.read_back(call, self.invocation(call, precision)))]

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        """The statements that compute `y`, the answer (channels last; HWIO for a kernel gradient)."""
        body = [*self.tensors(call, self.kernel(call), device, precision), *self.execution(call, device, precision)]
        return Program((*self.kernel_imports(call), *self.prelude(device, precision), *self.placed(device, body)))

    def program(self, call: ConvCall, device: str, precision: str) -> Program:
        """`describe`, made once per call signature: checks of one geometry on other data (the large
        tier draws each geometry 130 times) share the program, its source and its cache keys, which
        cost more than a small case's call (tests/test_reproductions.py checks that the data never shows)."""
        last = _last_program[0]
        if last is not None and last[0] is self and last[1] is call and last[2:4] == (device, precision):
            return last[4]  # (a check asks twice, for its reproduction and its run: the key costs a signature)
        key = (self, call.signature(), device, precision)
        found = _programs.get(key)
        if found is None:
            found = _programs[key] = self.describe(call, device, precision)
            if len(_programs) > PROGRAMS_KEPT:
                _programs.popitem(last=False)
        _last_program[0] = (self, call, device, precision, found)
        return found

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        try:
            self.refuse(call)
            program = self.program(call, device, precision)
        finally:
            _last_program[0] = None  # (its call's tensors are not held past their check)
        return self.to_numpy(program.run(call.bindings()))

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return self.program(call, device, precision).source()


class CallWrapper(Wrapper, FrameworkCall):
    """A framework call in another setting: `inner`'s hooks, but for those it overrides."""

    inner: FrameworkCall

    def __init__(self, inner: FrameworkCall, variant: str | None = None) -> None:
        super().__init__(inner, variant)

    def prelude(self, device: str, precision: str) -> list[Statement]:
        return self.inner.prelude(device, precision)

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        return self.inner.tensors(call, kernel, device, precision)

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return self.inner.invocation(call, precision)

    def read_back(self, call: ConvCall, result: Expr) -> Expr:
        return self.inner.read_back(call, result)

    def placed(self, device: str, statements: list[Statement]) -> list[Statement]:
        return self.inner.placed(device, statements)

    def to_numpy(self, value: Any) -> np.ndarray:
        return self.inner.to_numpy(value)

    def kernel(self, call: ConvCall) -> Expr:
        return self.inner.kernel(call)

    def kernel_imports(self, call: ConvCall) -> list[Statement]:
        return self.inner.kernel_imports(call)

    def refuse(self, call: ConvCall) -> None:
        self.inner.refuse(call)


class DerivativeAdapter(CallWrapper):
    """A derivative of a framework's primary call, by the framework's own autodiff: the gradient
    of <conv(x, w), dy> with respect to the input or the kernel (`grad-*`), or its Hessian-vector
    product taken through that gradient (`hvp-*`). The variant names the quantity, so every
    report, diff and expectation treats it as a column of its own. Each framework's module says how
    its autodiff differentiates `invocation` (`describe`)."""

    def __init__(self, primary: FrameworkCall, quantity: str) -> None:
        if quantity not in QUANTITIES:
            raise ValueError(f"unknown derivative {quantity!r}; one of {sorted(QUANTITIES)}")
        super().__init__(primary, quantity)
        self.quantity = quantity

    @property
    def primary(self) -> FrameworkCall:
        return self.inner

    @property
    def order(self) -> int:
        return QUANTITIES[self.quantity]

    @property
    def with_respect_to(self) -> str:
        return self.quantity.split("-")[1]  # "input" or "kernel"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        reason = self.inner.unsupported_reason(call_params)
        if reason is None and not call_params.geometry.has_valid_output:
            reason = "no valid output: there is nothing to differentiate"
        return reason

    def memory_estimate(self, call_params: CallParams) -> list[cost.Part]:
        return cost.derivative_call(cost.Shapes.of(call_params), self.order)

    @abstractmethod
    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        """The statements that compute `g`, the derivative (channels last; HWIO for the kernel's)."""


class DeviceComparison(Wrapper):
    """The primary call on the GPU judged against the same call on the CPU, same data, strict mode
    (within twice the bound; bit for bit on exact-integer data): a per-framework CPU-versus-GPU
    comparison that holds even where both differ from the reference."""

    def __init__(self, primary: Adapter) -> None:
        super().__init__(primary, "vs-cpu")
        self.devices = ("gpu",)
        self.baseline, self.baseline_device = primary, "cpu"

    @property
    def primary(self) -> Adapter:
        return self.inner

    def check_available(self, device: str) -> None:
        self.inner.check_available(device)
        self.inner.check_available("cpu")

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        return self.inner.run(call, device, precision)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        gpu = self.inner.reproduction(call, device, precision)
        cpu = self.inner.reproduction(call, "cpu", precision)
        return f"{cpu}\ny_cpu = y\n{gpu}\n# compare y (GPU) with y_cpu"


@dataclass(frozen=True)
class Target:
    adapter: Adapter
    device: str
    precision: str

    @functools.cached_property  # (a check asks for it several times; its fields never change)
    def id(self) -> str:
        suffix = "" if self.precision == "strict" else f"-{self.precision}"
        return f"{self.adapter.name}-{self.device}{suffix}"
