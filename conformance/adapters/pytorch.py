"""PyTorch: `torch.nn.functional.conv2d` (NCHW input, OIHW kernel).

Padding uses torch's own vocabulary wherever it has one, so the suite tests torch's SAME rather
than ours: SAME -> padding="same" (which torch allows only at stride 1), VALID -> "valid",
symmetric pads -> (pad_h, pad_w), asymmetric pads -> `F.pad` first, the usual porting idiom.

Every call is described once (`describe`, a `Program`): the same statements run and print as the
reproduction. The tensors enter as float64 and are cast by torch (`torch.from_numpy` has no
bfloat16), permuted from NHWC/HWIO and back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from conformance import machine
from conformance.adapters import oracles, padding
from conformance.adapters.base import (
    QUANTITIES,
    CallParams,
    ConvCall,
    DerivativeAdapter,
    DescribedAdapter,
    DeviceComparison,
    Unavailable,
)
from conformance.adapters.modes import numpy_output, physical_device
from conformance.adapters.program import (
    Assign,
    BinOp,
    Do,
    Expr,
    Import,
    Name,
    Program,
    SetAttr,
    Statement,
    Value,
    With,
    invoke,
    method,
)
from conformance.frameworks import TORCH
from conformance.machine import FactValue
from conformance.semantics import CONV_TRANSPOSE

NCHW, OIHW = (0, 3, 1, 2), (3, 2, 0, 1)  # from NHWC and HWIO
TO_NHWC, TO_HWIO = (0, 2, 3, 1), (2, 3, 1, 0)
TF32_FLAGS = ("torch.backends.cudnn.allow_tf32", "torch.backends.cuda.matmul.allow_tf32")
# The TF32 flags as torch set them before this process changed anything: "defaults" mode restores them.
_flag_defaults: dict[str, bool] = {}


@cache
def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise Unavailable(f"PyTorch is not installed ({exc})") from None
    _flag_defaults.update(
        {TF32_FLAGS[0]: torch.backends.cudnn.allow_tf32, TF32_FLAGS[1]: torch.backends.cuda.matmul.allow_tf32}
    )
    return torch


def runtime_facts() -> dict[str, FactValue]:
    """This process's torch's facts (Keras' torch backend too): what it reports, and oneDNN's ISA."""
    return machine.facts_of_this_process(TORCH.name, reported_facts())


def reported_facts() -> dict[str, FactValue]:
    """What this process's torch reports of the CPU kernels it takes: ATen's kernel level, and which
    dtypes its oneDNN convolutions take (bfloat16 only where oneDNN runs AVX-512, so
    ONEDNN_MAX_CPU_ISA decides it: the half-precision backward passes differ)."""
    torch = _torch()
    mkldnn = torch.backends.mkldnn
    reported: dict[str, FactValue] = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_enabled": bool(mkldnn.is_available() and mkldnn.enabled),
    }
    try:  # (private, but the check torch itself makes before choosing oneDNN for a half dtype)
        reported["onednn_bfloat16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        reported["onednn_float16"] = bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        pass  # an older torch: the dtypes are derived from the CPU instead
    return reported


def _torch_device(device: str) -> str:
    """The torch device of a target's device (one place, so tests can point "gpu" elsewhere)."""
    return "cuda" if physical_device(device) == "gpu" else "cpu"


def _prelude(precision: str) -> list[Statement]:
    """Imports and precision flags: strict turns TF32 off; defaults puts torch's own settings back."""
    _torch()
    flags = [SetAttr(flag, False if precision == "strict" else _flag_defaults[flag]) for flag in TF32_FLAGS]
    return [Import("torch"), Import("torch.nn.functional", "F"), *flags]


def _tensor(name: str, call: ConvCall, device: str, order: tuple[int, ...], source: Value = None) -> Expr:
    """`torch.tensor(name, float64).to(device, dtype).permute(order)`: `source` for another array."""
    made = invoke("torch.tensor", source if source is not None else Name(name), dtype=Name("torch.float64"))
    placed = method(made, "to", _torch_device(device), Name(f"torch.{call.dtype}"))
    return method(placed, "permute", *order)


class TorchConv2d(DescribedAdapter):
    framework = TORCH
    op = "conv2d"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return padding.torch_same_refusal(call_params.padding, call_params.stride)

    def check_available(self, device: str) -> None:
        torch = _torch()
        if physical_device(device) == "gpu" and not torch.cuda.is_available():
            build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
            raise Unavailable(f"no CUDA device visible to torch {torch.__version__} ({build})")

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        return Program(
            (*self.inputs(call, device, precision), With(invoke("torch.no_grad"), tuple(self.forward(call))))
        )

    def inputs(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        """Imports, flags and the NCHW input `xt` and OIHW kernel `wt`."""
        return [
            *self.kernel_imports(call),
            *_prelude(precision),
            Assign("xt", _tensor("x", call, device, NCHW), "NHWC -> NCHW"),
            Assign("wt", _tensor("w", call, device, OIHW, self.kernel(call)), "HWIO -> OIHW"),
        ]

    def rate(self, call: ConvCall) -> tuple[int, ...]:
        return call.rate

    def padding(self, call: ConvCall) -> tuple[str | tuple[int, ...], list[int] | None]:
        """(conv2d's padding=, the F.pad to apply first or None)."""
        return padding.torch_arguments(call.padding, call.geometry.pads)

    def forward(self, call: ConvCall) -> list[Statement]:
        """From `xt`, `wt` to `y`, NHWC."""
        argument, explicit = self.padding(call)
        pad = [Assign("xt", invoke("F.pad", Name("xt"), explicit), "[left, right, top, bottom]")] if explicit else []
        conv = invoke(
            "F.conv2d", Name("xt"), Name("wt"), stride=call.stride, padding=argument, dilation=self.rate(call),
            groups=call.groups,
        )  # fmt: skip
        return [*pad, Assign("y", method(conv, "permute", *TO_NHWC), "NHWC")]

    def to_numpy(self, value: Any) -> np.ndarray:
        torch = _torch()
        out = value.detach().cpu()
        return numpy_output(out.to(torch.float64).numpy(), str(out.dtype).removeprefix("torch."))

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
                "cudnn.allow_tf32 (default)": _flag_defaults[TF32_FLAGS[0]],
                "cuda.matmul.allow_tf32 (default)": _flag_defaults[TF32_FLAGS[1]],
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
            },
        }
        if torch.cuda.is_available():
            info["devices"].append(f"gpu: {torch.cuda.get_device_name(0)}")
        return info

    def runtime_facts(self) -> dict[str, FactValue]:
        return runtime_facts()


class TorchLayer(TorchConv2d):
    """`torch.nn.Conv2d`, the module users build, called first on an input of another spatial size
    and then on the case: state kept between calls (cached primitives or algorithms) must not leak."""

    variant = "layer"

    def forward(self, call: ConvCall) -> list[Statement]:
        argument, explicit = self.padding(call)
        c_in = call.x.shape[3]
        k_h, k_w, _, c_out = call.w.shape

        def padded(tensor: str) -> Expr:
            return invoke("F.pad", Name(tensor), explicit) if explicit else Name(tensor)

        layer = invoke(
            "torch.nn.Conv2d", c_in, c_out, (k_h, k_w), stride=call.stride, padding=argument, dilation=call.rate,
            groups=call.groups, bias=False, device=Name("xt.device"), dtype=Name("xt.dtype"),
        )  # fmt: skip
        return _called_on_another_size_first(layer, call, padded)


def _called_on_another_size_first(
    layer: Expr, call: ConvCall, prepared: Callable[[str], Expr] = Name
) -> list[Statement]:
    """`layer` (a module) with the case's kernel, called on an input 3 x 5 pixels larger, then on `xt`
    (each input through `prepared`: the pads the module cannot state)."""
    n, h, w, c_in = call.x.shape
    other = invoke("torch.ones", n, c_in, h + 3, w + 5, dtype=Name("xt.dtype"), device=Name("xt.device"))
    return [
        Assign("layer", layer),
        Do(method("layer.weight", "copy_", Name("wt"))),
        Assign("other", other),
        Do(invoke("layer", prepared("other")), "another spatial size first", f"on an input of size {[h + 3, w + 5]}"),
        Assign("y", method(invoke("layer", prepared("xt")), "permute", *TO_NHWC), "NHWC"),
    ]


class TorchConvTranspose2d(TorchConv2d):
    """`torch.nn.functional.conv_transpose2d`: the weight is (C_in, C_out / groups, k_h, k_w), which is the
    forward op's OIHW weight, so the case's kernel permutes exactly as conv2d's does."""

    op = "conv_transpose2d"
    operation = CONV_TRANSPOSE

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        arguments = padding.torch_transpose_arguments(call_params.geometry)
        return arguments if isinstance(arguments, str) else None

    def arguments(self, call: ConvCall) -> dict[str, Any]:
        arguments = padding.torch_transpose_arguments(call.geometry)
        assert not isinstance(arguments, str), arguments  # (refused by unsupported_reason)
        crops, extra = arguments
        return {"stride": call.stride, "padding": crops, "output_padding": extra, "groups": call.groups}

    def forward(self, call: ConvCall) -> list[Statement]:
        conv = invoke("F.conv_transpose2d", Name("xt"), Name("wt"), **self.arguments(call), dilation=call.rate)
        return [Assign("y", method(conv, "permute", *TO_NHWC), "NHWC")]


class TorchConvTransposeLayer(TorchConvTranspose2d):
    """`torch.nn.ConvTranspose2d`, called first on an input of another spatial size, then on the case."""

    variant = "layer"

    def forward(self, call: ConvCall) -> list[Statement]:
        k_h, k_w, out_per_group, c_in = call.w.shape
        layer = invoke(
            "torch.nn.ConvTranspose2d", c_in, out_per_group * call.groups, (k_h, k_w), **self.arguments(call),
            dilation=call.rate, bias=False, device=Name("xt.device"), dtype=Name("xt.dtype"),
        )  # fmt: skip
        return _called_on_another_size_first(layer, call)


PRIMARY = TorchConv2d()
TRANSPOSED = TorchConvTranspose2d()


class TorchTransposeAsForward(TorchConvTranspose2d):
    """Oracle: conv_transpose2d as F.conv2d (stride 1, the rate) of the zero-inserted input, padded (or,
    where negative, cropped) by F.pad, with the flipped, channel-swapped kernel: torch's forward
    kernels against its transposed one."""

    variant = "as-forward"
    baseline = TRANSPOSED

    def inputs(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        oracles.require_finite_for_zero_insertion(call)
        spread = invoke("stride_dilated_input", Name("x"), call.stride)
        kernel = invoke("adjoint_kernel", Name("w"), call.groups)
        return [
            Import("conformance.adapters.oracles", names=("adjoint_kernel", "stride_dilated_input")),
            *_prelude(precision),
            Assign("xt", _tensor("x", call, device, NCHW, spread), "zeros between pixels, NHWC -> NCHW"),
            Assign("wt", _tensor("w", call, device, OIHW, kernel), "flipped, in/out swapped, HWIO -> OIHW"),
        ]

    def forward(self, call: ConvCall) -> list[Statement]:
        (top, bottom), (left, right) = padding.dilated_input_pads(call.geometry)
        padded = invoke("F.pad", Name("xt"), [left, right, top, bottom])  # (negative: a crop)
        conv = invoke("F.conv2d", padded, Name("wt"), dilation=call.rate, groups=call.groups)
        return [Assign("y", method(conv, "permute", *TO_NHWC), "NHWC")]


class TorchZeroInserted(oracles.ZeroInserted, TorchConv2d):
    """Oracle: dilation 1 with the kernel's taps spread out by explicit zeros."""

    baseline = PRIMARY

    def rate(self, call: ConvCall) -> tuple[int, ...]:
        return (1, 1)


class TorchChannelsLast(TorchConv2d):
    """Oracle: the same call on channels_last (NHWC-in-memory) tensors, a different kernel family."""

    variant = "channels_last"
    baseline = PRIMARY

    def forward(self, call: ConvCall) -> list[Statement]:
        last = {"memory_format": Name("torch.channels_last")}
        return [
            Assign("xt", method("xt", "contiguous", **last)),
            Assign("wt", method("wt", "contiguous", **last)),
            *super().forward(call),
        ]


class TorchExplicitPads(oracles.ExplicitPads, TorchConv2d):
    """Oracle: SAME written out as the explicit pads of DESIGN.md (F.pad, then no padding)."""

    baseline = PRIMARY

    def padding(self, call: ConvCall) -> tuple[str | tuple[int, ...], list[int] | None]:
        return (0, 0), padding.last_axis_first(call.geometry.pads)


class TorchDerivative(DerivativeAdapter, DescribedAdapter):
    """torch.autograd on the primary call. The leaves are the same permuted (NHWC -> NCHW,
    HWIO -> OIHW) tensors the forward call gets, as in a port of TensorFlow weights; the HVP is
    double backward: autograd.grad with create_graph=True, then grad of <grad, v> again."""

    primary: TorchConv2d

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        wrt = Name("x_leaf" if self.with_respect_to == "input" else "w_leaf")
        y_nchw = method("y", "permute", *NCHW)
        statements = [
            *self.primary.inputs(call, device, precision),
            Assign(
                "x_leaf, w_leaf", (method("xt", "requires_grad_"), method("wt", "requires_grad_")), "before any padding"
            ),
            *self.primary.forward(call),
            Assign("dyt", _tensor("dy", call, device, NCHW)),
        ]
        if self.order == 1:
            statements.append(Assign("(g,)", invoke("torch.autograd.grad", y_nchw, [wrt], Name("dyt"))))
        else:
            leaves = [Name("x_leaf"), Name("w_leaf")]
            inner = BinOp(
                "+",
                method(BinOp("*", Name("gx"), Name("vxt")), "sum"),
                method(BinOp("*", Name("gw"), Name("vwt")), "sum"),
            )
            statements += [
                Assign("gx, gw", invoke("torch.autograd.grad", y_nchw, leaves, Name("dyt"), create_graph=True)),
                Assign("vxt", _tensor("vx", call, device, NCHW)),
                Assign("vwt", _tensor("vw", call, device, OIHW)),
                Assign("(g,)", invoke("torch.autograd.grad", inner, [wrt]), "H v"),
            ]
        back, layout = (TO_NHWC, "NHWC") if self.with_respect_to == "input" else (TO_HWIO, "HWIO")
        statements.append(Assign("g", method("g", "permute", *back), layout))
        return Program(tuple(statements), result="g")


ADAPTERS = (
    PRIMARY,
    TorchLayer(),
    TorchZeroInserted(),
    TorchChannelsLast(),
    TorchExplicitPads(),
    DeviceComparison(PRIMARY),
    *(TorchDerivative(PRIMARY, quantity) for quantity in QUANTITIES),
    TRANSPOSED,
    TorchConvTransposeLayer(),
    TorchTransposeAsForward(),
    DeviceComparison(TRANSPOSED),
    *(TorchDerivative(TRANSPOSED, quantity) for quantity in QUANTITIES),
)
