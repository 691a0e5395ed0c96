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

from conformance.adapters.base import Adapter, CallParams, ConvCall, Unavailable
from conformance.dtypes import float_format
from conformance.semantics import is_symmetric


@cache
def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(f"PyTorch is not installed ({exc})") from None
    return torch


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

        target_device = "cuda" if device == "gpu" else "cpu"
        dtype = _torch_dtype(call.dtype)
        # torch.from_numpy has no bfloat16: go through float32, which holds every bfloat16 exactly.
        x = torch.from_numpy(call.x.astype(np.float64)).to(target_device, dtype).permute(0, 3, 1, 2)
        w = torch.from_numpy(call.w.astype(np.float64)).to(target_device, dtype).permute(3, 2, 0, 1)
        padding, explicit = _padding_argument(call)
        with _precision(precision), torch.no_grad():
            if explicit is not None:
                x = F.pad(x, explicit)
            y = F.conv2d(x, w, stride=call.stride, padding=padding, dilation=call.rate, groups=call.groups)
        out = y.permute(0, 2, 3, 1).cpu()
        numpy_dtype = float_format(str(out.dtype).removeprefix("torch.")).numpy_dtype
        return out.to(torch.float64).numpy().astype(numpy_dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        padding, explicit = _padding_argument(call)
        target_device = "cuda" if device == "gpu" else "cpu"
        lines = [
            "import torch, torch.nn.functional as F",
        ]
        if precision == "strict":
            lines.append("torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False")
        to = f".to('{target_device}', torch.{call.dtype})"
        lines += [
            f"xt = torch.tensor(x, dtype=torch.float64){to}.permute(0, 3, 1, 2)  # NHWC -> NCHW",
            f"wt = torch.tensor(w, dtype=torch.float64){to}.permute(3, 2, 0, 1)  # HWIO -> OIHW",
        ]
        if explicit is not None:
            lines.append(f"xt = F.pad(xt, {explicit})  # [left, right, top, bottom]")
        lines.append(
            f"y = F.conv2d(xt, wt, stride={call.stride}, padding={padding!r}, dilation={call.rate}, "
            f"groups={call.groups}).permute(0, 2, 3, 1)  # NHWC"
        )
        return "\n".join(lines)

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


ADAPTERS = (TorchConv2d(),)
