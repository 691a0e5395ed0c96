"""Adapters that fail the way a broken framework build can, and one that is right but slow:
registered only by the harness's own tests (through `pytest_conformance_adapters`).

Each fault happens inside `run`, i.e. inside the framework call, where a real native kernel's would.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import re
import time
import warnings
from typing import Any

import numpy as np

from conformance import held_memory, reference
from conformance.adapters import Adapter, CallWrapper, ConvCall, FrameworkCall
from conformance.adapters.child import InChildProcess
from conformance.adapters.keras import KerasConv, ModelGraph
from conformance.adapters.program import Expr, Import, Statement, Value, invoke, method
from conformance.frameworks import JAX, Framework
from conformance.semantics import CONV_TRANSPOSE, TransposedGeometry


class FaultAdapter(Adapter):
    framework = Framework("faulty", "fault injection")
    devices = ("cpu",)

    def check_available(self, device: str) -> None:
        return None

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return f"# fault injection: tests/fault_adapters.py, {type(self).__name__}"

    def environment(self) -> dict[str, Any]:
        return {"version": "fault injection"}


class Segfault(FaultAdapter):
    op = "segfault"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        ctypes.memmove(16, b"boom", 4)  # writes to an unmapped page: SIGSEGV
        raise AssertionError("unreachable")


class CrashOnImport(FaultAdapter):
    """A build that dies loading its native library, before any convolution."""

    op = "import_crash"

    def check_available(self, device: str) -> None:
        ctypes.memmove(16, b"boom", 4)

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        raise AssertionError("unreachable")


class Abort(FaultAdapter):
    op = "abort"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        os.abort()  # what an uncaught C++ exception (std::terminate) does


class NativeHang(FaultAdapter):
    op = "hang"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        # C code that waits forever holding the GIL, so no Python-level timer or thread could
        # interrupt it: a mutex locked twice by its own thread (a deadlock; signals do not end the
        # wait), called through PyDLL, which keeps the GIL. It waits without spending CPU, which the
        # run's other worker needs (a busy hang would take a core for each timeout).
        libc = ctypes.PyDLL(None)
        mutex = ctypes.create_string_buffer(64)  # (zeros: a default mutex, PTHREAD_MUTEX_INITIALIZER)
        libc.pthread_mutex_lock(mutex)
        libc.pthread_mutex_lock(mutex)
        raise AssertionError("unreachable")


class HangOnImport(NativeHang):
    """A build whose native library never finishes loading."""

    op = "import_hang"

    def check_available(self, device: str) -> None:
        super().run(None, device, "strict")  # type: ignore[arg-type]


class MemoryHog(FaultAdapter):
    op = "hog"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        hoard = []
        while True:
            # 256 MiB at a time without end; untouched pages still count against the data limit,
            # so this is refused as soon as the limit is reached, however loaded the machine.
            hoard.append(np.empty(1 << 25))


_held_by_the_allocator: list[np.ndarray] = []


class PoisonedByOversize(FaultAdapter):
    """Runs out of memory on a large input, and the failed attempt leaves memory held (an allocator's
    cache, state a framework half built): afterwards its process cannot allocate a modest workspace,
    and every later check fails there too. Right on every input small enough."""

    op = "poisoned"
    oversize = 10  # input height from which it runs out of memory
    held = 600 << 20  # kept after the failure
    workspace = 500 << 20  # what every check needs; with `held` kept, more than a 1 GiB worker has left

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        if call.x.shape[1] >= self.oversize:
            _held_by_the_allocator.append(np.ones(self.held, dtype=np.uint8))
            raise MemoryError("Unable to allocate 9.38 GiB for an array with shape (49, 49, 2048, 256)")
        np.ones(self.workspace, dtype=np.uint8)
        y = reference.conv_resolved(call.x.astype(np.float64), call.w.astype(np.float64), call.geometry, call.groups)
        return y.astype(call.x.dtype)


class Jitter(FaultAdapter):
    """Right within the bound, but never the same bits twice: what a racy parallel reduction does."""

    op = "jitter"
    calls = 0

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        y = reference.conv_resolved(call.x.astype(np.float64), call.w.astype(np.float64), call.geometry, call.groups)
        y = y.astype(call.x.dtype)
        if y.size:
            Jitter.calls += 1
            bits = y.reshape(-1).view(f"u{y.itemsize}")
            bits[0] += Jitter.calls % 4 + 1  # a few ulps on the first element, different on every call
        return y


HOSTILE_TEXT = (
    '<script>window.__pwned_message = 1</script></script><img src=x onerror="window.__pwned_message = 2"> '
    "' onfocus='window.__pwned_message = 3' autofocus='  ${window.__pwned_message = 4}  膨胀卷积 🙂"
    " \x1b[2J\x1b[31mterminal escapes\x1b[0m \u202eright-to-left override\u202c"
)


class Hostile(FaultAdapter):
    """Everything it says is markup: its error message, its reproduction and its environment."""

    framework = Framework("hostile", "hostile text")
    op = "conv2d"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        raise RuntimeError(HOSTILE_TEXT)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return f"# {HOSTILE_TEXT}\nhostile.conv2d(x, w)"

    def environment(self) -> dict[str, Any]:
        return {"version": HOSTILE_TEXT, "devices": [HOSTILE_TEXT]}


class Slow(FaultAdapter):
    """The right answer after a pause: a run long enough to be killed half-way."""

    framework = Framework("paced", "slow but right")
    op = "slow"
    pause_s = 0.05

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        time.sleep(self.pause_s)
        y = reference.conv_resolved(call.x.astype(np.float64), call.w.astype(np.float64), call.geometry, call.groups)
        return y.astype(call.x.dtype)


class Leisurely(Slow):
    """Right, after half a second: a run long enough to be stopped half-way."""

    op = "leisurely"
    pause_s = 0.5


class Lingering(Leisurely):
    """Right, after $CONFORMANCE_TEST_LINGER_S seconds (a long framework call)."""

    op = "lingering"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        self.pause_s = float(os.environ.get("CONFORMANCE_TEST_LINGER_S", "0.5"))
        return super().run(call, device, precision)


class GilHog(Leisurely):
    """Right, after one native call that holds the GIL for about 2**($CONFORMANCE_TEST_GIL_HOG / 1.4)
    times 10 us (a framework kernel of minutes: no Python-level interruption reaches it meanwhile)."""

    op = "gil_hog"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        re.match(r"(a+)+$", "a" * int(os.environ.get("CONFORMANCE_TEST_GIL_HOG", "12")) + "b")
        return super().run(call, device, precision)


class ReportsFrozen(FaultAdapter):
    """Right; its environment block says how many objects its process has frozen (conformance/held_memory.py)."""

    op = "reports-frozen"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        return reference.conv_resolved(call.x, call.w, call.geometry, call.groups)

    def environment(self) -> dict[str, Any]:
        return {"version": "fault injection", "frozen": gc.get_freeze_count()}


class LingeringInChild(InChildProcess):
    """`Lingering` in a framework child process of its own, as Keras' backends and oneDNN variants run."""

    def __init__(self) -> None:
        super().__init__(Lingering(), "in-child", {"CONFORMANCE_TEST_CHILD": "lingering"}, devices=("cpu",))


_built: list[np.ndarray] = []  # what Hoarder keeps, as a framework keeps compiled programs
held_memory.on_release(_built.clear)
_leaked: list[np.ndarray] = []  # what Leaker keeps, where no release reaches it


class Hoarder(Leisurely):
    """Right, and keeps $CONFORMANCE_TEST_HOARD_MB MiB per check in a cache that it registers for
    release (conformance/held_memory.py), as frameworks keep a compiled program per geometry."""

    op = "hoarder"
    pause_s = 0.0
    kept = _built

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        self.kept.append(np.ones(int(os.environ.get("CONFORMANCE_TEST_HOARD_MB", "64")) << 20, dtype=np.uint8))
        return super().run(call, device, precision)


class Leaker(Hoarder):
    """`Hoarder`, but what it keeps no release can free: a leak, which only a new process ends."""

    op = "leaker"
    kept = _leaked


class LeakerInChild(InChildProcess):
    """`Leaker` in a framework child process of its own, keeping 160 MiB a check."""

    def __init__(self) -> None:
        environment = {"CONFORMANCE_TEST_CHILD": "leaker", "CONFORMANCE_TEST_HOARD_MB": "160"}
        super().__init__(Leaker(), "in-child", environment, devices=("cpu",))


class DieTogether(FaultAdapter):
    """Kills its process at the same moment as another worker's check does: each check writes its
    pid into $CONFORMANCE_TEST_RENDEZVOUS and waits until two have, then SIGKILLs itself (two
    crashing builds at once, or the OOM killer taking two workers)."""

    op = "die_together"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        import signal

        rendezvous = os.environ["CONFORMANCE_TEST_RENDEZVOUS"]
        open(os.path.join(rendezvous, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(rendezvous)) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


FAULT_ADAPTERS: tuple[Adapter, ...] = (
    Segfault(),
    CrashOnImport(),
    Abort(),
    NativeHang(),
    HangOnImport(),
    MemoryHog(),
)


class StrideRateBug(FaultAdapter):
    """Right, except when stride and rate are both above 1 along the height axis: then off by one
    in every element (the bug class of tensorflow#100237, for the fuzzer to find and shrink)."""

    op = "stride_rate_bug"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        y = reference.conv_resolved(call.x.astype(np.float64), call.w.astype(np.float64), call.geometry, call.groups)
        if call.stride[0] > 1 and call.rate[0] > 1:
            y = y + 1.0
        return y.astype(call.x.dtype)


class Warns(FaultAdapter):
    """Right, and warns on every call, as a framework's deprecation or performance notice does."""

    framework = Framework("warning", "a framework that warns")
    op = "warns"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        warnings.warn(f"fake framework notice for rate {list(call.rate)}", UserWarning, stacklevel=1)
        y = reference.conv_resolved(call.x.astype(np.float64), call.w.astype(np.float64), call.geometry, call.groups)
        return y.astype(call.x.dtype)


class FlippedFirstAxis(CallWrapper):
    """Any framework call with its kernel reversed along the first spatial axis (the time of a 1-D
    kernel, the depth of a 3-D one): a port that mixes up correlation and convolution along one axis.
    It changes the `kernel` hook only, so it breaks every framework's call the same way (Keras' run in
    their child processes, which import it from here)."""

    def __init__(self, inner: FrameworkCall) -> None:
        super().__init__(inner, "flipped-first-axis")

    def kernel_imports(self, call: ConvCall) -> list[Statement]:
        return [*self.inner.kernel_imports(call), Import("numpy", "np")]

    def kernel(self, call: ConvCall) -> Expr:
        return invoke("np.ascontiguousarray", invoke("np.flip", self.inner.kernel(call), 0))


# -- Keras layers that a broken front-end could produce (they run in Keras' own child processes,
# which import them from here) --


class KerasKernelNotTransposed(KerasConv):
    """A loader that writes the kernel's spatial axes swapped (k_w, k_h): what a port from an
    OIHW framework that forgets one transpose gives for square kernels."""

    def kernel_value(self, call: ConvCall, kernel: Value) -> Value:
        return method(kernel, "transpose", 1, 0, 2, 3)


class _RateTwelveWrittenEleven(ModelGraph):
    def conv(self, x: str, w: np.ndarray, rate: int) -> str:
        return super().conv(x, w, 11 if rate == 12 else rate)


class KerasModelWrongRate(KerasConv):
    """A model builder that writes one ASPP branch's rate off by one."""

    def model_graph(self, dtype: str) -> ModelGraph:
        return _RateTwelveWrittenEleven(dtype)


class KerasDiesInTheCall(KerasConv):
    """The Keras process killed in the middle of a layer call (a native crash in the backend)."""

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        os.kill(os.getpid(), 9)
        raise AssertionError("unreachable")


class _TransposedFault(FaultAdapter):
    """A transposed convolution computed by the reference on a distorted geometry or kernel."""

    operation = CONV_TRANSPOSE

    def distort(self, call: ConvCall) -> tuple[np.ndarray, TransposedGeometry]:
        raise NotImplementedError

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        w, geo = self.distort(call)
        return reference.conv_transpose_resolved(call.x, w, geo, call.groups).astype(call.x.dtype)


class TransposeShiftedOnePixel(_TransposedFault):
    """The crop moved one pixel later (Keras' torch backend did this for SAME, keras-team/keras#22876)."""

    op = "transpose_shifted"

    def distort(self, call: ConvCall) -> tuple[np.ndarray, TransposedGeometry]:
        geo = call.geometry
        assert isinstance(geo, TransposedGeometry)
        (top, bottom), (left, right) = geo.pads
        return call.w, dataclasses.replace(geo, pads=((top + 1, bottom - 1), (left + 1, right - 1)))


class TransposeKernelNotFlipped(_TransposedFault):
    """The kernel's taps reversed: what jax.lax.conv_transpose computes without transpose_kernel=True."""

    op = "transpose_unflipped"

    def distort(self, call: ConvCall) -> tuple[np.ndarray, TransposedGeometry]:
        return call.w[::-1, ::-1], call.geometry  # type: ignore[return-value]


class TransposeIgnoresOutputPadding(_TransposedFault):
    op = "transpose_no_output_padding"

    def distort(self, call: ConvCall) -> tuple[np.ndarray, TransposedGeometry]:
        geo = call.geometry
        assert isinstance(geo, TransposedGeometry)
        return call.w, dataclasses.replace(geo, output_padding=(0, 0))


class StorageDtypeSum(FaultAdapter):
    """A build that sums float16/bfloat16 taps in the storage dtype (the classic "optimisation"): every
    product and partial sum rounded to the case dtype, groups = 1. It answers as JAX, whose contract
    (cases/contracts.toml: float32 accumulation) it breaks while staying inside the dtype's bound."""

    framework = JAX
    op = "storage_sum"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        from numpy.lib.stride_tricks import sliding_window_view

        from conformance.semantics import effective_kernel_size

        dtype = call.x.dtype
        (top, bottom), (left, right) = call.geometry.pads
        x = np.pad(call.x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        k_h, k_w, c_in, c_out = call.w.shape
        (r_h, r_w), (s_h, s_w) = call.geometry.rate, call.geometry.stride
        span = (effective_kernel_size(k_h, r_h), effective_kernel_size(k_w, r_w))
        windows = sliding_window_view(x, span, axis=(1, 2))[:, ::s_h, ::s_w, :, ::r_h, ::r_w]  # n h w c u v
        total = np.zeros((*windows.shape[:3], c_out), dtype=dtype)
        for u in range(k_h):
            for v in range(k_w):
                for c in range(c_in):
                    total = (total + windows[..., c, u, v, None] * call.w[u, v, c]).astype(dtype)
        return total


class WithinContract(FaultAdapter):
    """Right up to random error just inside float32 accumulation's bound: 0.9 * gamma_n(2**-24) * S
    with random signs, then one rounding to the case dtype. Answers as JAX, like StorageDtypeSum."""

    framework = JAX
    op = "within_contract"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        from conformance.compare import gamma

        x, w = call.x.astype(np.float64), call.w.astype(np.float64)
        exact = reference.conv_resolved(x, w, call.geometry, call.groups)
        abs_products = reference.conv_resolved(np.abs(x), np.abs(w), call.geometry, call.groups)
        n = w.shape[0] * w.shape[1] * w.shape[2]
        signs = np.random.default_rng(0).choice([-1.0, 1.0], size=exact.shape)
        return (exact + signs * 0.9 * gamma(n, 2.0**-24) * abs_products).astype(call.x.dtype)


class ScaledKernelGradient(FaultAdapter):
    """The exact kernel gradient scaled by 1 + 2**-6, rounded once to the case dtype: in bfloat16 over a
    long accumulation the dtype's worst-case bound is infinite and a float32 contract's worst case is
    loose, so only the probabilistic bound sees it. Answers as JAX's kernel gradient."""

    framework = JAX
    op = "scaled_grad"
    quantity = "grad-kernel"

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        assert call.cotangent is not None
        exact = reference.conv_kernel_grad(
            call.x.astype(np.float64), call.cotangent.astype(np.float64), call.geometry, call.groups
        )
        return (exact * (1.0 + 2.0**-6)).astype(call.x.dtype)
