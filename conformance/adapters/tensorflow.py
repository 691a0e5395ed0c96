"""TensorFlow: `tf.nn.atrous_conv2d`, `tf.nn.conv1d`/`conv2d`/`conv3d(..., dilations=)`, the rank-free
`tf.nn.convolution`, `tf.nn.depthwise_conv2d` and the transposes (channels-last input, (*spatial, I, O)
kernel, the suite's own layouts).

Only the 2-D ops take explicit pads; `conv1d`, `conv3d` and `convolution` in 1-D and 3-D take "SAME"
or "VALID" alone, so explicit (and causal) pads reach them as users write them there: `tf.pad`, then
"VALID". Their transposes take the words only: explicit crops are `unsupported` there.

`atrous_conv2d` is the API the reference documents use; it has one integer rate, no stride, no
groups and only "SAME"/"VALID", so everything else is `unsupported` there. `conv2d` takes
per-axis dilations, strides, explicit pads and infers groups from the kernel's in-channels.
`depthwise_conv2d` is the separate kernel TF (and Keras' DepthwiseConv2D) uses when groups equal
the input channels: it gets every depthwise case.

Each op's call is one expression (`invocation`) over `x_t`, `w_t`; the execution modes are wrappers
that place it inside a `tf.function` (`InFunction`, also with XLA) or inside a `tf.function` built for
unknown spatial sizes (`AsLayer`), and the derivatives put it on a gradient tape. The oneDNN variants
run the eager call in a child process started with `TF_ENABLE_ONEDNN_OPTS` set (it is read once, at import).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np

from conformance import compile_cache, layouts, machine
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
    Unsupported,
)
from conformance.adapters.child import InChildProcess
from conformance.adapters.modes import numpy_output
from conformance.adapters.program import (
    Assign,
    BinOp,
    Cached,
    Do,
    Expr,
    Import,
    Lambda,
    Name,
    Program,
    Statement,
    Value,
    With,
    invoke,
    method,
)
from conformance.frameworks import TENSORFLOW, set_defaults
from conformance.machine import FactValue
from conformance.semantics import CONV_TRANSPOSE, as_transposed

# oneDNN is switched by an environment variable read once, at import.
ONEDNN_VARIANTS = {"onednn-on": "1", "onednn-off": "0"}
TENSORS = (Name("x_t"), Name("w_t"))


@cache
def _tf() -> Any:
    set_defaults(TENSORFLOW)
    compile_cache.point_tensorflow(TENSORFLOW)  # XLA's programs (`@jit-compile`) persist between runs
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise Unavailable(f"TensorFlow is not installed ({exc})") from None
    return tf


@cache
def _tf32_default() -> bool:
    """TF32 as TensorFlow starts (read before this process changes it): what "defaults" mode restores."""
    return bool(_tf().config.experimental.tensor_float_32_execution_enabled())


def onednn_enabled() -> bool | None:
    """Whether this process's TensorFlow uses oneDNN, as TensorFlow itself reports it (None: cannot tell)."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # private, but the only runtime answer
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def _onednn_already(flag: str) -> Callable[[], bool]:
    """Whether this process's TensorFlow has oneDNN as TF_ENABLE_ONEDNN_OPTS=`flag` would set it.
    The variable's only effect is the switch TensorFlow reports, whose default follows the CPU: on a
    machine whose default is off the onednn-off variant is this process's own conv2d, and a child
    would import TensorFlow again to compute the same thing (onednn-on likewise where the default is
    on). Foreseen by TensorFlow's rule (machine.predicted_facts: this process's variable, else the
    CPU's default) without importing TensorFlow, and confirmed by TensorFlow's own answer before a
    yes; unknown: a child."""
    wanted = flag == "1"

    def already() -> bool:
        if machine.predicted_facts(TENSORFLOW.name, machine.this_cpu(), os.environ)["onednn_enabled"] is not wanted:
            return False  # (a child, and no TensorFlow here on its account)
        _tf()  # (loaded as every target here loads it: defaults and compilation cache first)
        return onednn_enabled() is wanted

    return already


def runtime_facts() -> dict[str, FactValue]:
    """oneDNN as this process's TensorFlow uses it (Keras' TensorFlow backend too). Unset
    TF_ENABLE_ONEDNN_OPTS means on for some CPUs only, and with it on TensorFlow still hands oneDNN
    only the dtypes the CPU supports: its defects (and the refusals it avoids) follow these facts,
    not the variable. TensorFlow reports whether oneDNN is on; the rest is derived by its own rules."""
    return machine.facts_of_this_process(TENSORFLOW.name, reported_facts())


def reported_facts() -> dict[str, FactValue]:
    """What TensorFlow itself answers: whether oneDNN is on in this process."""
    return {"onednn_enabled": onednn_enabled()}


def _padding_argument(call: CallParams | ConvCall) -> str | list[list[int]]:
    return padding.native_word(call.padding) or padding.channels_last_pairs(call.geometry.pads)


def _padded(call: ConvCall, x: Expr, explicit_pads: bool) -> tuple[Expr, str | list[list[int]]]:
    """(the input, `padding=`) for an op: its own word, or the explicit pairs where the op takes them
    (`explicit_pads`), or `tf.pad` and then "VALID" where it does not (the idiom its docs leave users)."""
    word = padding.native_word(call.padding)
    if word is not None:
        return x, word
    pairs = padding.channels_last_pairs(call.geometry.pads)
    return (x, pairs) if explicit_pads else (invoke("tf.pad", x, pairs), "VALID")


def _tensor(name: str, dtype: str, source: Value = None, comment: str = "") -> Assign:
    value = invoke("tf.constant", source if source is not None else Name(name), Name("tf.float64"))
    return Assign(f"{name}_t", invoke("tf.cast", value, Name(f"tf.{dtype}")), comment)


class _TensorFlowCall(FrameworkCall):
    """A `tf.nn` op on an NHWC input `x_t` and an HWIO kernel `w_t`, the suite's own layouts."""

    framework = TENSORFLOW

    def check_available(self, device: str) -> None:
        tf = _tf()
        _tf32_default()  # read before any check changes it
        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            build = "built with CUDA" if tf.test.is_built_with_cuda() else "CPU-only build"
            raise Unavailable(f"no GPU visible to TensorFlow {tf.__version__} ({build})")

    def prelude(self, device: str, precision: str) -> list[Statement]:
        """The import and the precision mode's TF32 setting."""
        tf32 = False if precision == "strict" else _tf32_default()
        return [Import("tensorflow", "tf"), Do(invoke("tf.config.experimental.enable_tensor_float_32_execution", tf32))]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        return [_tensor("x", call.dtype, comment="NHWC"), _tensor("w", call.dtype, kernel, "HWIO")]

    def placed(self, device: str, statements: list[Statement]) -> list[Statement]:
        return [With(invoke("tf.device", f"/{device.upper()}:0"), tuple(statements))]

    def to_numpy(self, value: Any) -> np.ndarray:
        return numpy_output(value.numpy(), value.dtype.name)

    def environment(self) -> dict[str, Any]:
        tf = _tf()
        build = tf.sysconfig.get_build_info()
        devices = ["cpu"] + [f"gpu: {d.name}" for d in tf.config.list_physical_devices("GPU")]
        return {
            "version": tf.__version__,
            "devices": devices,
            "cuda_build": build.get("cuda_version"),
            "cudnn": build.get("cudnn_version"),
            "flags": {
                # Unset means on only for x86 CPUs with AVX512_VNNI/BF16 or AMX: record what is in effect.
                "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "(unset)"),
                "onednn_enabled": onednn_enabled(),
                "tensor_float_32_execution (default)": _tf32_default(),
            },
        }

    def runtime_facts(self) -> dict[str, FactValue]:
        return runtime_facts()


def _graph_context(call: ConvCall, device: str, precision: str) -> tuple[Any, ...]:
    """What a traced graph depends on besides its text: one graph per input shape, as a model has (a
    tf.function retraced for many shapes warns about retracing on every check)."""
    return (device, precision, call.dtype, call.x.shape, call.w.shape)


class InFunction(CallWrapper):
    """The call inside a `tf.function` (graph mode), or with `jit_compile=True` (XLA's kernels, not
    TensorFlow's): built and traced once per text and reused by every check that shares it, as a
    model reuses its layers."""

    def __init__(self, inner: FrameworkCall, jit_compile: bool = False) -> None:
        super().__init__(inner, "jit-compile" if jit_compile else "function")
        self.jit_compile = jit_compile

    def execution(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        xla = {"jit_compile": True} if self.jit_compile else {}
        # autograph=False: the body is one expression, there is no Python control flow to convert.
        function = invoke(
            "tf.function", Lambda(("x_t", "w_t"), self.invocation(call, precision)), autograph=False, **xla
        )
        graph = Cached(function, _graph_context(call, device, precision))
        return [Assign("y", self.read_back(call, invoke(graph, *TENSORS)))]


class AsLayer(CallWrapper):
    """The call in a `tf.function` built for unknown spatial sizes (as a Keras layer's is), run on
    another size first: padding or space_to_batch blocks computed for the first size must not be reused."""

    def __init__(self, inner: FrameworkCall) -> None:
        super().__init__(inner, "layer")

    def execution(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        dtype = Name(f"tf.{call.dtype}")
        n, *spatial, c = call.x.shape
        larger = [size + 3 + 2 * axis for axis, size in enumerate(spatial)]  # 3 x 5 pixels larger in 2-D
        signature = [
            invoke("tf.TensorSpec", [None, *(None for _ in spatial), c], dtype),
            invoke("tf.TensorSpec", list(call.w.shape), dtype),
        ]
        body = Lambda(("x_t", "w_t"), self.invocation(call, precision))
        layer = invoke("tf.function", body, input_signature=signature, autograph=False)
        return [
            Assign("layer", Cached(layer, _graph_context(call, device, precision))),
            Do(
                invoke("layer", invoke("tf.ones", [n, *larger, c], dtype), Name("w_t")),
                "another spatial size first",
                f"on an input of size {larger}",
            ),
            Assign("y", self.read_back(call, invoke("layer", *TENSORS))),
        ]


class TensorFlowAtrousConv2d(_TensorFlowCall):
    op = "atrous_conv2d"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        reasons = []
        if any(s != 1 for s in call_params.stride):
            reasons.append("has no stride (it is always 1)")
        if len(set(call_params.rate)) != 1:
            reasons.append("takes one integer rate for both axes")
        if padding.native_word(call_params.padding) is None:
            reasons.append('takes only "SAME" or "VALID" padding')
        if call_params.groups != 1:
            reasons.append("has no groups")
        return f"tf.nn.{self.op} " + "; ".join(reasons) if reasons else None

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return invoke("tf.nn.atrous_conv2d", *TENSORS, rate=call.rate[0], padding=call.padding)


class TensorFlowConv(_TensorFlowCall):
    """`tf.nn.conv{rank}d`: conv1d and conv2d take the stride and the dilation per spatial axis, conv3d per
    axis of the whole NDHWC tensor (`_axis_values`)."""

    def __init__(self, rank: int = 2) -> None:
        self.rank, self.ranks, self.op = rank, (rank,), f"conv{rank}d"

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        x, padding_argument = _padded(call, Name("x_t"), explicit_pads=self.rank == 2)
        if self.rank == 1:
            return invoke(
                "tf.nn.conv1d", x, Name("w_t"), stride=list(call.stride), padding=padding_argument,
                dilations=list(call.rate),
            )  # fmt: skip
        return invoke(
            f"tf.nn.conv{self.rank}d", x, Name("w_t"), strides=_axis_values(call.stride), padding=padding_argument,
            dilations=_axis_values(call.rate),
        )  # fmt: skip


def _axis_values(values: tuple[int, ...]) -> list[int]:
    """Strides or dilations as the op of their rank takes them: per spatial axis, except conv3d and
    conv3d_transpose, which take them per axis of the whole NDHWC tensor (1 on batch and channels)."""
    return [1, *values, 1] if len(values) == 3 else list(values)


class TensorFlowConvolution(_TensorFlowCall):
    """`tf.nn.convolution`: the rank-free entry point (Keras' TensorFlow backend calls it), which picks
    the rank's op from the input's shape. A target for 1-D and 3-D cases: in 2-D it is conv2d's own
    kernel, which `tensorflow.conv2d` and Keras' Conv2D already judge on every 2-D case."""

    op = "convolution"
    ranks = (1, 3)

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        x, padding_argument = _padded(call, Name("x_t"), explicit_pads=False)
        return invoke(
            "tf.nn.convolution", x, Name("w_t"), strides=list(call.stride), padding=padding_argument,
            dilations=list(call.rate),
        )  # fmt: skip


class TensorFlowDepthwiseConv2d(_TensorFlowCall):
    """Our HWIO kernel (k_h, k_w, 1, C*m) is TF's depthwise filter (k_h, k_w, C, m): output channel
    c*m + j reads input channel c in both layouts, so a reshape is the whole translation."""

    op = "depthwise_conv2d"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        reasons = []
        channels = call_params.input_shape[-1]
        if call_params.groups != channels or call_params.kernel_shape[-2] != 1:
            reasons.append("is only for depthwise convolution (groups = input channels)")
        if len(set(call_params.stride)) != 1:
            reasons.append("takes one stride for both axes")
        return "tf.nn.depthwise_conv2d " + "; ".join(reasons) if reasons else None

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        *taps, _, out_channels = call.w.shape
        channels = call.x.shape[-1]
        filters = invoke("tf.reshape", Name("w_t"), [*taps, channels, out_channels // channels])
        strides = [1, *call.stride, 1]
        return invoke(
            "tf.nn.depthwise_conv2d", Name("x_t"), filters, strides, padding=_padding_argument(call),
            dilations=list(call.rate),
        )  # fmt: skip


CONV2D = TensorFlowConv(2)


class Nchw(CallWrapper):
    """Oracle: the same convolution with data_format="NCHW" (a separate kernel path)."""

    def __init__(self) -> None:
        super().__init__(CONV2D, "nchw")
        self.baseline = CONV2D

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        rank = len(call.rate)
        word = padding.native_word(call.padding)
        nchw = invoke(
            "tf.nn.conv2d", invoke("tf.transpose", Name("x_t"), list(layouts.channels_first(rank))), Name("w_t"),
            strides=[1, 1, *call.stride], padding=word or padding.channels_first_pairs(call.geometry.pads),
            data_format="NCHW", dilations=[1, 1, *call.rate],
        )  # fmt: skip
        return invoke("tf.transpose", nchw, list(layouts.channels_last(rank)))

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        try:
            return super().run(call, device, precision)
        except Exception as exc:
            if "NHWC" in str(exc) and "CPU" in str(exc):  # a documented CPU limitation, not a finding
                raise Unsupported(f"TensorFlow's CPU Conv2D takes only NHWC ({type(exc).__name__})") from None
            raise


def _transposed_output_shape(call: ConvCall) -> list[int]:
    """TF states a transposed convolution's size as its output shape, NHWC."""
    return [call.x.shape[0], *call.geometry.output_size, call.w.shape[-2] * call.groups]


def _forward_reaches(call_params: CallParams) -> str | None:
    """TF defines the transposed convolution by the forward one whose input has `output_shape` and
    checks that its output has this input's size: output_padding at or past the stride gives the
    forward convolution another output row, so no output_shape states it."""
    geo = as_transposed(call_params.geometry)
    if any(extra >= s for extra, s in zip(geo.output_padding, geo.stride, strict=True)):
        return (
            f"output_padding {list(geo.output_padding)} is not below the stride {list(geo.stride)}: "
            "TensorFlow states the output by its forward convolution's input shape, which then has another output row"
        )
    return None


class TensorFlowConvTranspose(_TensorFlowCall):
    """`tf.nn.conv{rank}d_transpose`: filters (*spatial, out, in) are the case's kernel as it stands;
    `output_shape`; SAME, VALID or (2-D only) explicit [[0, 0], [top, bottom], [left, right], [0, 0]]
    pads (crops). conv3d_transpose takes strides and dilations per axis of the whole tensor."""

    operation = CONV_TRANSPOSE

    def __init__(self, rank: int = 2) -> None:
        self.rank, self.ranks, self.op = rank, (rank,), f"conv{rank}d_transpose"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if self.rank != 2 and padding.native_word(call_params.padding) is None:
            return f'tf.nn.{self.op} takes padding "SAME" or "VALID" only (explicit crops: conv2d_transpose)'
        return _forward_reaches(call_params)

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return invoke(
            f"tf.nn.{self.op}", *TENSORS, output_shape=_transposed_output_shape(call),
            strides=_axis_values(call.stride), padding=_padding_argument(call), dilations=_axis_values(call.rate),
        )  # fmt: skip


class TensorFlowAtrousConv2dTranspose(TensorFlowAtrousConv2d):
    """`tf.nn.atrous_conv2d_transpose`: atrous_conv2d's adjoint, with its limits (one rate, no stride,
    SAME or VALID, no groups); TensorFlow computes it through space_to_batch, not a dilated kernel."""

    op = "atrous_conv2d_transpose"
    operation = CONV_TRANSPOSE

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return invoke(
            "tf.nn.atrous_conv2d_transpose", *TENSORS, output_shape=_transposed_output_shape(call), rate=call.rate[0],
            padding=call.padding,
        )  # fmt: skip


class TensorFlowDerivative(DerivativeAdapter):
    """tf.GradientTape on the primary eager call (for atrous_conv2d that differentiates through its
    space_to_batch formulation, a gradient path of its own); the HVP nests a second tape around
    the first one's gradient."""

    inner: _TensorFlowCall

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        names = ("dy", *(("vx", "vw") if self.order == 2 else ()))
        tensors = [
            *self.inner.tensors(call, self.inner.kernel(call), device, precision),
            *(_tensor(name, call.dtype) for name in names),
        ]
        wrt = Name("x_t" if self.with_respect_to == "input" else "w_t")
        both = list(TENSORS)

        def taped(tape: str, body: Sequence[Statement]) -> With:
            return With(invoke("tf.GradientTape"), (Do(method(tape, "watch", both)), *body), tape)

        forward = [Assign("y", self.inner.invocation(call, precision))]
        if self.order == 1:
            body: list[Statement] = [
                taped("tape", forward),
                Assign("g", method("tape", "gradient", Name("y"), wrt, output_gradients=Name("dy_t"))),
            ]
        else:
            product = BinOp(
                "+",
                invoke("tf.reduce_sum", BinOp("*", Name("gx"), Name("vx_t"))),
                invoke("tf.reduce_sum", BinOp("*", Name("gw"), Name("vw_t"))),
            )
            body = [
                taped(
                    "outer",
                    [
                        taped("inner", forward),
                        Assign("gx, gw", method("inner", "gradient", Name("y"), both, output_gradients=Name("dy_t"))),
                        Assign("product", product),
                    ],
                ),
                Assign("g", method("outer", "gradient", Name("product"), wrt), "H v"),
            ]
        statements = (*self.inner.prelude(device, precision), *self.inner.placed(device, [*tensors, *body]))
        return Program(statements, result="g")


ATROUS_CONV2D, DEPTHWISE_CONV2D = TensorFlowAtrousConv2d(), TensorFlowDepthwiseConv2d()
CONV2D_TRANSPOSE, ATROUS_CONV2D_TRANSPOSE = TensorFlowConvTranspose(2), TensorFlowAtrousConv2dTranspose()
CONVOLUTION = TensorFlowConvolution()


def _other_rank_targets(rank: int) -> tuple[FrameworkCall | DeviceComparison, ...]:
    """conv1d or conv3d and its transpose: the eager call, graph mode and XLA, the oracles that apply,
    the derivatives. (oneDNN's on/off children and the layer mode stay with the 2-D ops.)"""
    conv, transposed = TensorFlowConv(rank), TensorFlowConvTranspose(rank)
    return (
        conv,
        InFunction(conv),
        InFunction(conv, jit_compile=True),
        oracles.ZeroInserted(conv),
        oracles.ExplicitPads(conv),
        DeviceComparison(conv),
        *(TensorFlowDerivative(primary, quantity) for primary in (conv, transposed) for quantity in QUANTITIES),
        transposed,
        InFunction(transposed),
        InFunction(transposed, jit_compile=True),
        DeviceComparison(transposed),
    )


ADAPTERS = (
    ATROUS_CONV2D,
    CONV2D,
    DEPTHWISE_CONV2D,
    *(InFunction(primary) for primary in (ATROUS_CONV2D, CONV2D, DEPTHWISE_CONV2D)),
    AsLayer(CONV2D),
    AsLayer(DEPTHWISE_CONV2D),
    # oneDNN is TensorFlow's CPU library: these run on the CPU only.
    *(
        InChildProcess(
            CONV2D, variant, {"TF_ENABLE_ONEDNN_OPTS": flag}, devices=("cpu",), already_here=_onednn_already(flag)
        )
        for variant, flag in ONEDNN_VARIANTS.items()
    ),
    oracles.Against(ATROUS_CONV2D, CONV2D, "equals-conv2d"),
    oracles.ZeroInserted(CONV2D),
    oracles.ExplicitPads(CONV2D),
    Nchw(),
    DeviceComparison(CONV2D),
    *(
        TensorFlowDerivative(primary, quantity)
        for primary in (ATROUS_CONV2D, CONV2D, DEPTHWISE_CONV2D, CONV2D_TRANSPOSE, ATROUS_CONV2D_TRANSPOSE)
        for quantity in QUANTITIES
    ),
    CONV2D_TRANSPOSE,
    ATROUS_CONV2D_TRANSPOSE,
    InFunction(CONV2D_TRANSPOSE),
    InFunction(CONV2D_TRANSPOSE, jit_compile=True),  # XLA computes what the CPU kernel refuses (dilation, groups)
    DeviceComparison(CONV2D_TRANSPOSE),
    CONVOLUTION,
    InFunction(CONVOLUTION),
    *_other_rank_targets(1),
    *_other_rank_targets(3),
)
