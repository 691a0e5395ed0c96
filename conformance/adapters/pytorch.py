"""PyTorch: `torch.nn.functional.conv2d` (NCHW input, OIHW kernel).

Padding uses torch's own vocabulary wherever it has one, so the suite tests torch's SAME rather
than ours: SAME -> padding="same" (which torch allows only at stride 1), VALID -> "valid",
symmetric pads -> (pad_h, pad_w), asymmetric pads -> `F.pad` first, the usual porting idiom.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np

from conformance.adapters.base import (
    INSERTED_ZEROS,
    QUANTITIES,
    Adapter,
    CallParams,
    ConvCall,
    DerivativeAdapter,
    DeviceComparison,
    Unavailable,
    require_finite,
    zero_inserted_kernel,
)
from conformance.dtypes import float_format
from conformance.semantics import is_symmetric


@cache
def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(f"PyTorch is not installed ({exc})") from None
    return torch


def _torch_device(device: str) -> str:
    """The torch device of a target's device (one place, so tests can point "gpu" elsewhere)."""
    return "cuda" if device == "gpu" else "cpu"


def _torch_dtype(name: str) -> Any:
    return getattr(_torch(), name)


@contextlib.contextmanager
def _precision(precision: str) -> Iterator[None]:
    """strict: no TF32 anywhere; defaults: leave torch's own settings alone."""
    torch = _torch()
    if precision != "strict":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _padding_argument(call: CallParams | ConvCall) -> tuple[str | tuple[int, int], list[int] | None]:
    """(padding= for conv2d, F.pad's [left, right, top, bottom] or None)."""
    if call.padding == "SAME":
        return "same", None
    if call.padding == "VALID":
        return "valid", None
    pads = call.geometry.pads
    if is_symmetric(pads):
        return (pads[0][0], pads[1][0]), None
    return (0, 0), [pads[1][0], pads[1][1], pads[0][0], pads[0][1]]


class TorchConv2d(Adapter):
    framework = "torch"
    distributions = ("torch",)
    op = "conv2d"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if call_params.padding == "SAME" and call_params.stride != (1, 1):
            return "torch's padding='same' is only defined for stride 1"
        return None

    def check_available(self, device: str) -> None:
        torch = _torch()
        if device == "gpu" and not torch.cuda.is_available():
            build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
            raise Unavailable(f"no CUDA device visible to torch {torch.__version__} ({build})")

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        torch = _torch()
        import torch.nn.functional as F

        target_device = _torch_device(device)
        dtype = _torch_dtype(call.dtype)
        # torch.from_numpy has no bfloat16: go through float64, which holds every case value exactly.
        x = torch.from_numpy(call.x.astype(np.float64)).to(target_device, dtype).permute(0, 3, 1, 2)
        w = torch.from_numpy(self._kernel(call).astype(np.float64)).to(target_device, dtype).permute(3, 2, 0, 1)
        with _precision(precision), torch.no_grad():
            y = self._forward(torch, F, x, w, call)
        out = y.permute(0, 2, 3, 1).cpu()
        numpy_dtype = float_format(str(out.dtype).removeprefix("torch.")).numpy_dtype
        return out.to(torch.float64).numpy().astype(numpy_dtype)

    def _kernel(self, call: ConvCall) -> np.ndarray:
        return call.w

    def _rate(self, call: ConvCall) -> tuple[int, int]:
        return call.rate

    def _padding(self, call: ConvCall) -> tuple[str | tuple[int, int], list[int] | None]:
        return _padding_argument(call)

    def _forward(self, torch: Any, F: Any, x: Any, w: Any, call: ConvCall) -> Any:
        padding, explicit = self._padding(call)
        if explicit is not None:
            x = F.pad(x, explicit)
        return F.conv2d(x, w, stride=call.stride, padding=padding, dilation=self._rate(call), groups=call.groups)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        padding, explicit = self._padding(call)
        target_device = _torch_device(device)
        lines = [
            "import torch, torch.nn.functional as F",
        ]
        if precision == "strict":
            lines.append("torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False")
        to = f".to('{target_device}', torch.{call.dtype})"
        lines += [
            f"xt = torch.tensor(x, dtype=torch.float64){to}.permute(0, 3, 1, 2)  # NHWC -> NCHW",
            f"wt = torch.tensor(w, dtype=torch.float64){to}.permute(3, 2, 0, 1)  # HWIO -> OIHW",
            *self._source_lines(call, padding, explicit),
        ]
        return "\n".join(lines)

    def _source_lines(self, call: ConvCall, padding: Any, explicit: list[int] | None) -> list[str]:
        lines = [f"xt = F.pad(xt, {explicit})  # [left, right, top, bottom]"] if explicit is not None else []
        return [
            *lines,
            f"y = F.conv2d(xt, wt, stride={call.stride}, padding={padding!r}, dilation={self._rate(call)}, "
            f"groups={call.groups}).permute(0, 2, 3, 1)  # NHWC",
        ]

    def environment(self) -> dict[str, Any]:
        torch = _torch()
        info: dict[str, Any] = {
            "version": torch.__version__,
            "cuda_build": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "mkldnn": torch.backends.mkldnn.is_available(),
            "threads": torch.get_num_threads(),
            "devices": ["cpu"],
            "flags": {
                "cudnn.allow_tf32 (default)": torch.backends.cudnn.allow_tf32,
                "cuda.matmul.allow_tf32 (default)": torch.backends.cuda.matmul.allow_tf32,
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
            },
        }
        if torch.cuda.is_available():
            info["devices"].append(f"gpu: {torch.cuda.get_device_name(0)}")
        return info


class TorchLayer(TorchConv2d):
    """`torch.nn.Conv2d`, the module users build, called first on an input of another spatial size
    and then on the case: state kept between calls (cached primitives or algorithms) must not leak."""

    variant = "layer"

    def _forward(self, torch: Any, F: Any, x: Any, w: Any, call: ConvCall) -> Any:
        padding, explicit = self._padding(call)
        layer = torch.nn.Conv2d(
            x.shape[1], w.shape[0], tuple(w.shape[2:]), stride=call.stride, padding=padding,
            dilation=call.rate, groups=call.groups, bias=False, device=x.device, dtype=x.dtype,
        )  # fmt: skip
        layer.weight.copy_(w)
        other = torch.ones(x.shape[0], x.shape[1], x.shape[2] + 3, x.shape[3] + 5, dtype=x.dtype, device=x.device)
        layer(F.pad(other, explicit) if explicit is not None else other)
        return layer(F.pad(x, explicit) if explicit is not None else x)

    def _source_lines(self, call: ConvCall, padding: Any, explicit: list[int] | None) -> list[str]:
        pad = (lambda t: f"F.pad({t}, {explicit})") if explicit is not None else (lambda t: t)
        return [
            f"layer = torch.nn.Conv2d(xt.shape[1], wt.shape[0], tuple(wt.shape[2:]), stride={call.stride}, "
            f"padding={padding!r}, dilation={call.rate}, groups={call.groups}, bias=False, "
            "device=xt.device, dtype=xt.dtype)",
            "with torch.no_grad():",
            "    layer.weight.copy_(wt)",
            "    other = torch.ones(xt.shape[0], xt.shape[1], xt.shape[2] + 3, xt.shape[3] + 5, "
            "dtype=xt.dtype, device=xt.device)",
            f"    layer({pad('other')})  # another spatial size first",
            f"    y = layer({pad('xt')}).permute(0, 2, 3, 1)  # NHWC",
        ]


PRIMARY = TorchConv2d()


class TorchZeroInserted(TorchConv2d):
    """Oracle: rate 1 with the kernel's taps spread out by explicit zeros."""

    variant = "zero-inserted"
    baseline = PRIMARY

    def _kernel(self, call: ConvCall) -> np.ndarray:
        require_finite(call, INSERTED_ZEROS)
        return zero_inserted_kernel(call.w, call.rate)

    def _rate(self, call: ConvCall) -> tuple[int, int]:
        return (1, 1)

    def _source_lines(self, call: ConvCall, padding: Any, explicit: list[int] | None) -> list[str]:
        return [
            "from conformance.adapters.base import zero_inserted_kernel",
            f"wt = torch.tensor(zero_inserted_kernel(w, {call.rate}), dtype=torch.float64)"
            f".to(xt.device, xt.dtype).permute(3, 2, 0, 1)",
            *super()._source_lines(call, padding, explicit),
        ]


class TorchChannelsLast(TorchConv2d):
    """Oracle: the same call on channels_last (NHWC-in-memory) tensors, a different kernel family."""

    variant = "channels_last"
    baseline = PRIMARY

    def _forward(self, torch: Any, F: Any, x: Any, w: Any, call: ConvCall) -> Any:
        last = torch.channels_last
        return super()._forward(torch, F, x.contiguous(memory_format=last), w.contiguous(memory_format=last), call)

    def _source_lines(self, call: ConvCall, padding: Any, explicit: list[int] | None) -> list[str]:
        return [
            "xt = xt.contiguous(memory_format=torch.channels_last)",
            "wt = wt.contiguous(memory_format=torch.channels_last)",
            *super()._source_lines(call, padding, explicit),
        ]


class TorchExplicitPads(TorchConv2d):
    """Oracle: SAME written out as the explicit pads of DESIGN.md (F.pad, then no padding)."""

    variant = "explicit-pads"
    baseline = PRIMARY

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if call_params.padding != "SAME":
            return "the SAME-equals-explicit-pads oracle applies to SAME cases only"
        return super().unsupported_reason(call_params)

    def _padding(self, call: ConvCall) -> tuple[str | tuple[int, int], list[int] | None]:
        (top, bottom), (left, right) = call.geometry.pads
        return (0, 0), [left, right, top, bottom]


class TorchDerivative(DerivativeAdapter):
    """torch.autograd on the primary call. The leaves are the same permuted (NHWC -> NCHW,
    HWIO -> OIHW) views the forward call gets, as in a port of TensorFlow weights; the HVP is
    double backward: autograd.grad with create_graph=True, then grad of <grad, v> again."""

    primary: TorchConv2d

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        torch = _torch()
        import torch.nn.functional as F

        assert call.cotangent is not None and call.direction_input is not None and call.direction_kernel is not None
        target_device = _torch_device(device)
        dtype = _torch_dtype(call.dtype)

        def tensor(array: np.ndarray, order: tuple[int, ...]) -> Any:
            return torch.from_numpy(array.astype(np.float64)).to(target_device, dtype).permute(*order)

        x = tensor(call.x, NCHW).requires_grad_()
        w = tensor(call.w, OIHW).requires_grad_()
        dy = tensor(call.cotangent, NCHW)
        with _precision(precision):
            y = self.primary._forward(torch, F, x, w, call)
            if self.order == 1:
                (gradient,) = torch.autograd.grad(y, [x if self.with_respect_to == "input" else w], dy)
            else:
                gx, gw = torch.autograd.grad(y, [x, w], dy, create_graph=True)
                vx, vw = tensor(call.direction_input, NCHW), tensor(call.direction_kernel, OIHW)
                inner = (gx * vx).sum() + (gw * vw).sum()
                (gradient,) = torch.autograd.grad(inner, [x if self.with_respect_to == "input" else w])
        back = (0, 2, 3, 1) if self.with_respect_to == "input" else (2, 3, 1, 0)  # to NHWC / HWIO
        out = gradient.permute(*back).cpu()
        numpy_dtype = float_format(str(out.dtype).removeprefix("torch.")).numpy_dtype
        return out.to(torch.float64).numpy().astype(numpy_dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        forward = self.primary.reproduction(call, device, precision).splitlines()
        to = f".to('{_torch_device(device)}', torch.{call.dtype})"
        wrt = "x_leaf" if self.with_respect_to == "input" else "w_leaf"
        back = "(0, 2, 3, 1)  # NHWC" if self.with_respect_to == "input" else "(2, 3, 1, 0)  # HWIO"
        leaves = next(i for i, line in enumerate(forward) if line.startswith("wt = ")) + 1
        lines = [
            *forward[:leaves],
            "x_leaf, w_leaf = xt.requires_grad_(), wt.requires_grad_()  # before any padding",
            *forward[leaves:],
            f"dyt = torch.tensor(dy, dtype=torch.float64){to}.permute(0, 3, 1, 2)",
        ]
        if self.order == 1:
            lines.append(f"(g,) = torch.autograd.grad(y.permute(0, 3, 1, 2), [{wrt}], dyt)")
        else:
            lines += [
                "gx, gw = torch.autograd.grad(y.permute(0, 3, 1, 2), [x_leaf, w_leaf], dyt, create_graph=True)",
                f"vxt = torch.tensor(vx, dtype=torch.float64){to}.permute(0, 3, 1, 2)",
                f"vwt = torch.tensor(vw, dtype=torch.float64){to}.permute(3, 2, 0, 1)",
                f"(g,) = torch.autograd.grad((gx * vxt).sum() + (gw * vwt).sum(), [{wrt}])  # H v",
            ]
        lines.append(f"g = g.permute{back}")
        return "\n".join(lines)


NCHW, OIHW = (0, 3, 1, 2), (3, 2, 0, 1)  # from NHWC and HWIO

ADAPTERS = (
    PRIMARY,
    TorchLayer(),
    TorchZeroInserted(),
    TorchChannelsLast(),
    TorchExplicitPads(),
    DeviceComparison(PRIMARY),
    *(TorchDerivative(PRIMARY, quantity) for quantity in QUANTITIES),
)
