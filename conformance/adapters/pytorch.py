"""PyTorch: `torch.nn.functional.conv1d`, `conv2d` and `conv3d` and their transposes (channels-first
input, (O, I, *spatial) kernel), one target per rank as torch names them.

Padding uses torch's own vocabulary wherever it has one, so the suite tests torch's SAME rather
than ours: SAME -> padding="same" (which torch allows only at stride 1), VALID -> "valid",
symmetric pads -> (pad_h, pad_w), asymmetric pads -> `F.pad` first, the usual porting idiom.

The tensors enter as float64 and are cast by torch (`torch.from_numpy` has no bfloat16), permuted
from NHWC/HWIO and back. The module users build (`TorchModule`), channels_last memory, the explicit
pads and the transposed convolution as a forward one are wrappers over the functional call.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from conformance import layouts, machine
from conformance.adapters import oracles, padding
from conformance.adapters.base import (
    QUANTITIES,
    CallParams,
    CallWrapper,
    ConvCall,
    DerivativeAdapter,
    DeviceComparison,
    FrameworkCall,
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


def _tensor(source: Value, call: ConvCall, device: str, order: tuple[int, ...]) -> Expr:
    """`torch.tensor(source, float64).to(device, dtype).permute(order)`."""
    made = invoke("torch.tensor", source, dtype=Name("torch.float64"))
    placed = method(made, "to", _torch_device(device), Name(f"torch.{call.dtype}"))
    return method(placed, "permute", *order)


class TorchConv(FrameworkCall):
    """`F.conv{rank}d`: one class for every rank, since torch's three functions take the same
    arguments, one value per spatial axis."""

    framework = TORCH

    def __init__(self, rank: int = 2) -> None:
        self.rank, self.ranks, self.op = rank, (rank,), f"conv{rank}d"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return padding.torch_same_refusal(call_params.padding, call_params.stride)

    def check_available(self, device: str) -> None:
        torch = _torch()
        if physical_device(device) == "gpu" and not torch.cuda.is_available():
            build = "CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
            raise Unavailable(f"no CUDA device visible to torch {torch.__version__} ({build})")

    def prelude(self, device: str, precision: str) -> list[Statement]:
        """Imports and precision flags: strict turns TF32 off; defaults puts torch's own settings back."""
        _torch()
        flags = [SetAttr(flag, False if precision == "strict" else _flag_defaults[flag]) for flag in TF32_FLAGS]
        return [Import("torch"), Import("torch.nn.functional", "F"), *flags]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        """The channels-first input and the (O, I, *spatial) weight; the tensors enter as float64 and are
        cast by torch (`torch.from_numpy` has no bfloat16)."""
        rank = len(call.rate)
        return [
            Assign("x_t", _tensor(Name("x"), call, device, layouts.channels_first(rank)), "NHWC -> NCHW"),
            Assign("w_t", _tensor(kernel, call, device, layouts.out_in_first(rank)), "HWIO -> OIHW"),
        ]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        argument, _ = padding.torch_arguments(call.padding, call.geometry.pads)
        return self.conv(call, self.module_input(call, Name("x_t")), argument)

    def conv(self, call: ConvCall, x: Expr, padding_argument: str | tuple[int, ...]) -> Expr:
        return invoke(
            f"F.conv{self.rank}d", x, Name("w_t"), stride=call.stride, padding=padding_argument, dilation=call.rate,
            groups=call.groups,
        )  # fmt: skip

    def module_input(self, call: ConvCall, x: Expr) -> Expr:
        """`x` as the call (or a module) takes it: asymmetric pads are `F.pad` first, the porting idiom,
        since conv2d takes one pad per axis."""
        _, explicit = padding.torch_arguments(call.padding, call.geometry.pads)
        return invoke("F.pad", x, explicit) if explicit else x

    def module(self, call: ConvCall) -> Expr:
        """The `torch.nn` module users build for this call (an execution mode calls it)."""
        argument, _ = padding.torch_arguments(call.padding, call.geometry.pads)
        c_in, (*taps, _, c_out) = call.x.shape[-1], call.w.shape
        return invoke(
            f"torch.nn.Conv{self.rank}d", c_in, c_out, tuple(taps), stride=call.stride, padding=argument,
            dilation=call.rate,
            groups=call.groups, bias=False, device=Name("x_t.device"), dtype=Name("x_t.dtype"),
        )  # fmt: skip

    def read_back(self, call: ConvCall, result: Expr) -> Expr:
        return method(result, "permute", *layouts.channels_last(len(call.rate)))

    def placed(self, device: str, statements: list[Statement]) -> list[Statement]:
        return [With(invoke("torch.no_grad"), tuple(statements))]

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


class TorchConvTranspose(TorchConv):
    """`torch.nn.functional.conv_transpose{rank}d`: the weight is (C_in, C_out / groups, *spatial), which is
    the forward op's (O, I, *spatial) weight, so the case's kernel permutes exactly as convNd's does."""

    operation = CONV_TRANSPOSE

    def __init__(self, rank: int = 2) -> None:
        super().__init__(rank)
        self.op = f"conv_transpose{rank}d"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        arguments = padding.torch_transpose_arguments(call_params.geometry)
        return arguments if isinstance(arguments, str) else None

    def arguments(self, call: ConvCall) -> dict[str, Any]:
        arguments = padding.torch_transpose_arguments(call.geometry)
        assert not isinstance(arguments, str), arguments  # (refused by unsupported_reason)
        crops, extra = arguments
        return {"stride": call.stride, "padding": crops, "output_padding": extra, "groups": call.groups}

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return invoke(f"F.{self.op}", Name("x_t"), Name("w_t"), **self.arguments(call), dilation=call.rate)

    def module_input(self, call: ConvCall, x: Expr) -> Expr:
        return x

    def module(self, call: ConvCall) -> Expr:
        *taps, out_per_group, c_in = call.w.shape
        return invoke(
            f"torch.nn.ConvTranspose{self.rank}d", c_in, out_per_group * call.groups, tuple(taps),
            **self.arguments(call), dilation=call.rate, bias=False, device=Name("x_t.device"), dtype=Name("x_t.dtype"),
        )  # fmt: skip


class TorchModule(CallWrapper):
    """The `torch.nn` module users build (`torch.nn.Conv2d`, `torch.nn.ConvTranspose1d`, ...), called first
    on an input of another spatial size and then on the case: state kept between calls (cached
    primitives or algorithms) must not leak."""

    inner: TorchConv

    def __init__(self, primary: TorchConv) -> None:
        super().__init__(primary, "layer")

    def execution(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        n, *spatial, c_in = call.x.shape
        larger = [size + 3 + 2 * axis for axis, size in enumerate(spatial)]  # 3 x 5 pixels larger in 2-D
        other = invoke("torch.ones", n, c_in, *larger, dtype=Name("x_t.dtype"), device=Name("x_t.device"))
        module_input = self.inner.module_input
        return [
            Assign("layer", self.inner.module(call)),
            Do(method("layer.weight", "copy_", Name("w_t"))),
            Assign("other", other),
            Do(
                invoke("layer", module_input(call, Name("other"))),
                "another spatial size first",
                f"on an input of size {larger}",
            ),
            Assign("y", self.read_back(call, invoke("layer", module_input(call, Name("x_t")))), "NHWC"),
        ]


class TorchTransposeAsForward(CallWrapper):
    """Oracle: conv_transposeNd as F.convNd (stride 1, the rate) of the zero-inserted input, padded (or,
    where negative, cropped) by F.pad, with the flipped, channel-swapped kernel: torch's forward
    kernels against its transposed one."""

    inner: TorchConvTranspose

    def __init__(self, transposed: TorchConvTranspose) -> None:
        super().__init__(transposed, "as-forward")
        self.baseline = transposed

    def refuse(self, call: ConvCall) -> None:
        oracles.require_finite_for_zero_insertion(call)
        self.inner.refuse(call)

    def kernel_imports(self, call: ConvCall) -> list[Statement]:
        return [Import("conformance.adapters.oracles", names=("adjoint_kernel", "stride_dilated_input"))]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        rank = len(call.rate)
        spread = invoke("stride_dilated_input", Name("x"), call.stride)
        flipped = invoke("adjoint_kernel", kernel, call.groups)
        return [
            Assign(
                "x_t", _tensor(spread, call, device, layouts.channels_first(rank)), "zeros between pixels, NHWC -> NCHW"
            ),
            Assign(
                "w_t",
                _tensor(flipped, call, device, layouts.out_in_first(rank)),
                "flipped, in/out swapped, HWIO -> OIHW",
            ),
        ]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        pads = padding.last_axis_first(tuple(padding.dilated_input_pads(call.geometry)))
        padded = invoke("F.pad", Name("x_t"), pads)  # (negative: a crop)
        return invoke(f"F.conv{self.inner.rank}d", padded, Name("w_t"), dilation=call.rate, groups=call.groups)


# The memory format that keeps channels last in memory, per rank: torch has one for 4-D and 5-D tensors.
CHANNELS_LAST_FORMATS = {2: "channels_last", 3: "channels_last_3d"}


class TorchChannelsLast(CallWrapper):
    """Oracle: the same call on channels-last-in-memory tensors (channels_last, channels_last_3d), a
    different kernel family."""

    inner: TorchConv

    def __init__(self, primary: TorchConv) -> None:
        super().__init__(primary, "channels_last")
        self.baseline = primary

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        last = {"memory_format": Name(f"torch.{CHANNELS_LAST_FORMATS[self.inner.rank]}")}
        return [
            *self.inner.tensors(call, kernel, device, precision),
            Assign("x_t", method("x_t", "contiguous", **last)),
            Assign("w_t", method("w_t", "contiguous", **last)),
        ]


class TorchExplicitPads(oracles.ExplicitPads):
    """Oracle: SAME written out as the explicit pads of DESIGN.md, as porters write them: F.pad, then
    no padding (torch's own spelling of symmetric pads would leave the pads to the kernel again)."""

    inner: TorchConv

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        padded = invoke("F.pad", Name("x_t"), padding.last_axis_first(call.geometry.pads))
        return self.inner.conv(call, padded, (0,) * len(call.rate))


class TorchDerivative(DerivativeAdapter):
    """torch.autograd on the primary call. The leaves are the same permuted (NHWC -> NCHW,
    HWIO -> OIHW) tensors the forward call gets, as in a port of TensorFlow weights; the HVP is
    double backward: autograd.grad with create_graph=True, then grad of <grad, v> again."""

    inner: TorchConv

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        rank = len(call.rate)
        wrt = Name("x_t" if self.with_respect_to == "input" else "w_t")
        statements = [
            *self.inner.prelude(device, precision),
            *self.inner.tensors(call, self.inner.kernel(call), device, precision),
            Assign("x_t, w_t", (method("x_t", "requires_grad_"), method("w_t", "requires_grad_")), "the leaves"),
            Assign("y_t", self.inner.invocation(call, precision), "NCHW"),
            Assign("dy_t", _tensor(Name("dy"), call, device, layouts.channels_first(rank))),
        ]
        if self.order == 1:
            statements.append(Assign("(g,)", invoke("torch.autograd.grad", Name("y_t"), [wrt], Name("dy_t"))))
        else:
            inner = BinOp(
                "+",
                method(BinOp("*", Name("gx"), Name("vx_t")), "sum"),
                method(BinOp("*", Name("gw"), Name("vw_t")), "sum"),
            )
            leaves = [Name("x_t"), Name("w_t")]
            statements += [
                Assign("gx, gw", invoke("torch.autograd.grad", Name("y_t"), leaves, Name("dy_t"), create_graph=True)),
                Assign("vx_t", _tensor(Name("vx"), call, device, layouts.channels_first(rank))),
                Assign("vw_t", _tensor(Name("vw"), call, device, layouts.out_in_first(rank))),
                Assign("(g,)", invoke("torch.autograd.grad", inner, [wrt]), "H v"),
            ]
        wrt_input = self.with_respect_to == "input"
        back, layout = (layouts.channels_last(rank), "NHWC") if wrt_input else (layouts.spatial_first(rank), "HWIO")
        statements.append(Assign("g", method("g", "permute", *back), layout))
        return Program(tuple(statements), result="g")


def _targets(primary: TorchConv, transposed: TorchConvTranspose) -> tuple[FrameworkCall | DeviceComparison, ...]:
    """One rank's targets: the functional calls, the modules, the oracles that apply, the derivatives."""
    channels_last = (TorchChannelsLast(primary),) if primary.rank in CHANNELS_LAST_FORMATS else ()
    return (
        primary,
        TorchModule(primary),
        oracles.ZeroInserted(primary),
        *channels_last,
        TorchExplicitPads(primary),
        DeviceComparison(primary),
        *(TorchDerivative(primary, quantity) for quantity in QUANTITIES),
        transposed,
        TorchModule(transposed),
        TorchTransposeAsForward(transposed),
        DeviceComparison(transposed),
        *(TorchDerivative(transposed, quantity) for quantity in QUANTITIES),
    )


RANKS = (1, 2, 3)
CALLS = {rank: (TorchConv(rank), TorchConvTranspose(rank)) for rank in RANKS}  # rank -> (forward, transposed)
PRIMARY = CALLS[2][0]
ADAPTERS = tuple(target for rank in RANKS for target in _targets(*CALLS[rank]))
