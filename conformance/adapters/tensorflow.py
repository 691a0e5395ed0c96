"""TensorFlow: `tf.nn.atrous_conv2d`, `tf.nn.conv2d(..., dilations=)` and `tf.nn.depthwise_conv2d`
(NHWC input, HWIO kernel).

`atrous_conv2d` is the API the reference documents use; it has one integer rate, no stride, no
groups and only "SAME"/"VALID", so everything else is `unsupported` there. `conv2d` takes
per-axis dilations, strides, explicit pads and infers groups from the kernel's in-channels.
`depthwise_conv2d` is the separate kernel TF (and Keras' DepthwiseConv2D) uses when groups equal
the input channels: it gets every depthwise case.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
from collections import OrderedDict
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
    Unsupported,
    require_finite,
    zero_inserted_kernel,
)
from conformance.dtypes import float_format

# oneDNN is switched by an environment variable read once, at import: these variants run the same
# adapter in a child process of their own, started with the variable set.
ONEDNN_VARIANTS = {"onednn-on": "1", "onednn-off": "0"}


@cache
def _tf() -> Any:
    # TensorFlow's C++ start-up chatter is noise in test output; the user's own setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise Unavailable(f"TensorFlow is not installed ({exc})") from None
    return tf


@cache
def _tf32_default() -> bool:
    return bool(_tf().config.experimental.tensor_float_32_execution_enabled())


@contextlib.contextmanager
def _placement(device: str, precision: str) -> Iterator[None]:
    tf = _tf()
    tf.config.experimental.enable_tensor_float_32_execution(precision != "strict" and _tf32_default())
    with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
        yield


def _padding_argument(call: CallParams | ConvCall) -> str | list[list[int]]:
    if call.padding in ("SAME", "VALID"):
        return str(call.padding)
    (top, bottom), (left, right) = call.geometry.pads
    return [[0, 0], [top, bottom], [left, right], [0, 0]]


def _onednn_enabled() -> bool | None:
    try:
        from tensorflow.python.util import _pywrap_util_port  # private, but the only runtime answer
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


class _TensorFlowAdapter(Adapter):
    framework = "tensorflow"
    distributions = ("tensorflow", "tensorflow-cpu")

    def check_available(self, device: str) -> None:
        tf = _tf()
        if device == "gpu" and not tf.config.list_physical_devices("GPU"):
            build = "built with CUDA" if tf.test.is_built_with_cuda() else "CPU-only build"
            raise Unavailable(f"no GPU visible to TensorFlow {tf.__version__} ({build})")

    def __init__(self, variant: str = "") -> None:
        self.variant = variant
        if variant in ONEDNN_VARIANTS:
            self.devices = ("cpu",)  # oneDNN is TensorFlow's CPU library

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        if self.variant in ONEDNN_VARIANTS:
            return _child(self.variant).call(self.op, call, device, precision)
        tf = _tf()
        dtype = getattr(tf, call.dtype)
        _tf32_default()  # read before the first change
        with _placement(device, precision):
            x = tf.cast(tf.constant(call.x.astype(np.float64)), dtype)
            w = tf.cast(tf.constant(self._kernel(call).astype(np.float64)), dtype)
            if self.variant == "function":
                y = _graph(self, call, device, precision, lambda a, b: self._call(tf, a, b, call), layer=False)(x, w)
            elif self.variant == "layer":
                layer = _graph(self, call, device, precision, lambda a, b: self._call(tf, a, b, call), layer=True)
                y = _layer_call(tf, layer, x, w)
            else:
                y = self._call(tf, x, w, call)
        return y.numpy().astype(float_format(y.dtype.name).numpy_dtype)

    def _kernel(self, call: ConvCall) -> np.ndarray:
        return call.w

    def _call(self, tf: Any, x: Any, w: Any, call: ConvCall) -> Any:
        raise NotImplementedError

    def _source(self, call: ConvCall) -> str:
        raise NotImplementedError

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        tf32 = "False" if precision == "strict" else "True"
        lines = []
        if self.variant in ONEDNN_VARIANTS:
            lines.append(f"import os; os.environ['TF_ENABLE_ONEDNN_OPTS'] = '{ONEDNN_VARIANTS[self.variant]}'")
        lines += [
            "import tensorflow as tf",
            f"tf.config.experimental.enable_tensor_float_32_execution({tf32})",
            f"with tf.device('/{device.upper()}:0'):",
            f"    x_t = tf.cast(tf.constant(x, tf.float64), tf.{call.dtype})  # NHWC",
            f"    w_t = tf.cast(tf.constant(w, tf.float64), tf.{call.dtype})  # HWIO",
            *(f"    {line}" for line in self._prelude(call)),
        ]
        call_source = self._source(call)
        if self.variant == "function":
            lines.append(f"    y = tf.function(lambda x_t, w_t: {call_source})(x_t, w_t)")
        elif self.variant == "layer":
            lines += [
                "    spec = [tf.TensorSpec([None, None, None, x_t.shape[3]], x_t.dtype), "
                "tf.TensorSpec(w_t.shape, w_t.dtype)]",
                f"    layer = tf.function(lambda x_t, w_t: {call_source}, input_signature=spec)",
                "    layer(tf.ones([x_t.shape[0], x_t.shape[1] + 3, x_t.shape[2] + 5, x_t.shape[3]], x_t.dtype), w_t)"
                "  # another size first",
                "    y = layer(x_t, w_t)",
            ]
        else:
            lines.append(f"    y = {call_source}")
        return "\n".join(lines)

    def _prelude(self, call: ConvCall) -> list[str]:
        return []

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
                "onednn_enabled": _onednn_enabled(),
                "tensor_float_32_execution (default)": _tf32_default(),
            },
        }


# tf.function objects per formulation and geometry: a graph is traced once per input shape and dtype
# and reused by every case (and draw of data) that shares them, as a model's layer is.
_graphs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
GRAPH_CACHE_SIZE = 256


def _graph(adapter: _TensorFlowAdapter, call: ConvCall, device: str, precision: str, function: Any, layer: bool) -> Any:
    """`function` as a tf.function, reused for every call with the same shapes and geometry (it reads
    those from the `call` it closes over); `layer`: built for unknown spatial sizes, as Keras does."""
    tf = _tf()
    padding = call.padding if isinstance(call.padding, (str, int)) else tuple(map(tuple, call.padding))
    key = (adapter.name, layer, call.x.shape, call.w.shape, call.dtype, call.rate, call.stride, padding)
    key += (call.geometry.pads, call.groups, device, precision)
    if key not in _graphs:
        signature = None
        if layer:
            dtype = getattr(tf, call.dtype)
            signature = [tf.TensorSpec([None, None, None, call.x.shape[3]], dtype), tf.TensorSpec(call.w.shape, dtype)]
        _graphs[key] = tf.function(function, input_signature=signature)
        if len(_graphs) > GRAPH_CACHE_SIZE:
            _graphs.popitem(last=False)
    _graphs.move_to_end(key)
    return _graphs[key]


def _layer_call(tf: Any, layer: Any, x: Any, w: Any) -> Any:
    """A graph built for unknown spatial sizes (as a Keras layer's is), run on another size first:
    padding or space_to_batch blocks computed for the first size must not be reused."""
    other = tf.ones([x.shape[0], x.shape[1] + 3, x.shape[2] + 5, x.shape[3]], x.dtype)
    try:
        layer(other, w)
    except Exception as exc:
        raise type(exc)(f"on the first input, of spatial size {list(other.shape[1:3])}: {exc}") from None
    return layer(x, w)


class TensorFlowAtrousConv2d(_TensorFlowAdapter):
    op = "atrous_conv2d"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        reasons = []
        if call_params.stride != (1, 1):
            reasons.append("has no stride (it is always 1)")
        if call_params.rate[0] != call_params.rate[1]:
            reasons.append("takes one integer rate for both axes")
        if call_params.padding not in ("SAME", "VALID"):
            reasons.append('takes only "SAME" or "VALID" padding')
        if call_params.groups != 1:
            reasons.append("has no groups")
        return "tf.nn.atrous_conv2d " + "; ".join(reasons) if reasons else None

    def _call(self, tf: Any, x: Any, w: Any, call: ConvCall) -> Any:
        return tf.nn.atrous_conv2d(x, w, rate=call.rate[0], padding=call.padding)

    def _source(self, call: ConvCall) -> str:
        return f"tf.nn.atrous_conv2d(x_t, w_t, rate={call.rate[0]}, padding={call.padding!r})"


class TensorFlowConv2d(_TensorFlowAdapter):
    op = "conv2d"

    def _call(self, tf: Any, x: Any, w: Any, call: ConvCall) -> Any:
        return tf.nn.conv2d(x, w, strides=list(call.stride), padding=_padding_argument(call), dilations=list(call.rate))

    def _source(self, call: ConvCall) -> str:
        return (
            f"tf.nn.conv2d(x_t, w_t, strides={list(call.stride)}, padding={_padding_argument(call)!r}, "
            f"dilations={list(call.rate)})"
        )


class TensorFlowDepthwiseConv2d(_TensorFlowAdapter):
    """Our HWIO kernel (k_h, k_w, 1, C*m) is TF's depthwise filter (k_h, k_w, C, m): output channel
    c*m + j reads input channel c in both layouts, so a reshape is the whole translation."""

    op = "depthwise_conv2d"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        reasons = []
        channels = call_params.input_shape[3]
        if call_params.groups != channels or call_params.kernel_shape[2] != 1:
            reasons.append("is only for depthwise convolution (groups = input channels)")
        if call_params.stride[0] != call_params.stride[1]:
            reasons.append("takes one stride for both axes")
        return "tf.nn.depthwise_conv2d " + "; ".join(reasons) if reasons else None

    def _call(self, tf: Any, x: Any, w: Any, call: ConvCall) -> Any:
        filters = tf.reshape(w, _depthwise_filter_shape(call))
        strides = [1, call.stride[0], call.stride[1], 1]
        return tf.nn.depthwise_conv2d(x, filters, strides, padding=_padding_argument(call), dilations=list(call.rate))

    def _source(self, call: ConvCall) -> str:
        return (
            f"tf.nn.depthwise_conv2d(x_t, tf.reshape(w_t, {_depthwise_filter_shape(call)}), "
            f"strides={[1, call.stride[0], call.stride[1], 1]}, padding={_padding_argument(call)!r}, "
            f"dilations={list(call.rate)})"
        )


def _depthwise_filter_shape(call: ConvCall) -> list[int]:
    k_h, k_w, _, out_channels = call.w.shape
    channels = call.x.shape[3]
    return [k_h, k_w, channels, out_channels // channels]


CONV2D = TensorFlowConv2d()


class TensorFlowAtrousEqualsConv2d(TensorFlowAtrousConv2d):
    """Oracle: `atrous_conv2d` must equal `conv2d(dilations=)`, whatever the reference says."""

    baseline = CONV2D

    def __init__(self) -> None:
        super().__init__("equals-conv2d")


class TensorFlowZeroInserted(TensorFlowConv2d):
    """Oracle: rate 1 with the kernel's taps spread out by explicit zeros."""

    baseline = CONV2D

    def __init__(self) -> None:
        super().__init__("zero-inserted")

    def _kernel(self, call: ConvCall) -> np.ndarray:
        require_finite(call, INSERTED_ZEROS)
        return zero_inserted_kernel(call.w, call.rate)

    def _call(self, tf: Any, x: Any, w: Any, call: ConvCall) -> Any:
        return tf.nn.conv2d(x, w, strides=list(call.stride), padding=_padding_argument(call), dilations=[1, 1])

    def _prelude(self, call: ConvCall) -> list[str]:
        return [
            "from conformance.adapters.base import zero_inserted_kernel",
            f"w_t = tf.cast(tf.constant(zero_inserted_kernel(w, {call.rate}), tf.float64), tf.{call.dtype})",
        ]

    def _source(self, call: ConvCall) -> str:
        return f"tf.nn.conv2d(x_t, w_t, strides={list(call.stride)}, padding={_padding_argument(call)!r})"


class TensorFlowExplicitPads(TensorFlowConv2d):
    """Oracle: SAME written out as the explicit pads of DESIGN.md."""

    baseline = CONV2D

    def __init__(self) -> None:
        super().__init__("explicit-pads")

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return None if call_params.padding == "SAME" else "the SAME-equals-explicit-pads oracle is for SAME cases"

    def _call(self, tf: Any, x: Any, w: Any, call: ConvCall) -> Any:
        return tf.nn.conv2d(x, w, strides=list(call.stride), padding=_explicit(call), dilations=list(call.rate))

    def _source(self, call: ConvCall) -> str:
        return (
            f"tf.nn.conv2d(x_t, w_t, strides={list(call.stride)}, padding={_explicit(call)!r}, "
            f"dilations={list(call.rate)})"
        )


class TensorFlowNchw(TensorFlowConv2d):
    """Oracle: the same convolution with data_format="NCHW" (a separate kernel path)."""

    baseline = CONV2D

    def __init__(self) -> None:
        super().__init__("nchw")

    def _call(self, tf: Any, x: Any, w: Any, call: ConvCall) -> Any:
        padding = _nchw_padding(call)
        try:
            y = tf.nn.conv2d(
                tf.transpose(x, [0, 3, 1, 2]), w, strides=[1, 1, *call.stride], padding=padding,
                data_format="NCHW", dilations=[1, 1, *call.rate],
            )  # fmt: skip
        except Exception as exc:
            if "NHWC" in str(exc) and "CPU" in str(exc):  # a documented CPU limitation, not a finding
                raise Unsupported(f"TensorFlow's CPU Conv2D takes only NHWC ({type(exc).__name__})") from None
            raise
        return tf.transpose(y, [0, 2, 3, 1])

    def _source(self, call: ConvCall) -> str:
        padding = _nchw_padding(call)
        return (
            f"tf.transpose(tf.nn.conv2d(tf.transpose(x_t, [0, 3, 1, 2]), w_t, strides={[1, 1, *call.stride]}, "
            f"padding={padding!r}, data_format='NCHW', dilations={[1, 1, *call.rate]}), [0, 2, 3, 1])"
        )


def _nchw_padding(call: ConvCall) -> str | list[list[int]]:
    """The padding argument with its per-axis pairs in NCHW order."""
    padding = _padding_argument(call)
    return padding if isinstance(padding, str) else [padding[0], padding[3], padding[1], padding[2]]


def _explicit(call: ConvCall) -> list[list[int]]:
    (top, bottom), (left, right) = call.geometry.pads
    return [[0, 0], [top, bottom], [left, right], [0, 0]]


class _Child:
    """A TensorFlow process with its own TF_ENABLE_ONEDNN_OPTS, answering one call at a time."""

    def __init__(self, variant: str) -> None:
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": ONEDNN_VARIANTS[variant]}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.variant = variant
        self._ready = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", "conformance.adapters.tensorflow_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def ready(self) -> None:
        """Wait until the child has imported TensorFlow: that is loading, not the first call's work."""
        if not self._ready:
            self.request(("environment",))
            self._ready = True

    def request(self, message: tuple[Any, ...]) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        payload = pickle.dumps(message)
        try:
            self.process.stdin.write(struct.pack("<Q", len(payload)) + payload)
            self.process.stdin.flush()
            header = self.process.stdout.read(8)
        except BrokenPipeError:
            header = b""
        if len(header) < 8:
            code = self.process.wait()
            _child.cache_clear()  # the next check starts a fresh one
            raise RuntimeError(f"the TF_ENABLE_ONEDNN_OPTS={ONEDNN_VARIANTS[self.variant]} process died (exit {code})")
        kind, *rest = pickle.loads(self.process.stdout.read(struct.unpack("<Q", header)[0]))
        if kind == "ok":
            return rest[0]
        if kind == "unavailable":
            raise Unavailable(rest[0])
        if kind == "unsupported":
            raise Unsupported(rest[0])
        raise type(rest[0], (Exception,), {})(rest[1])  # the framework's own exception name

    def call(self, op: str, call: ConvCall, device: str, precision: str) -> np.ndarray:
        return self.request(("run", op, call, device, precision))


@cache
def _child(variant: str) -> _Child:
    return _Child(variant)


def serve() -> None:
    """The child's loop: its stdout carries only answers (stray prints go to stderr)."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    while header := requests.read(8):
        kind, *args = pickle.loads(requests.read(struct.unpack("<Q", header)[0]))
        try:
            if kind == "environment":
                answer: tuple[Any, ...] = ("ok", CONV2D.environment())
            else:
                op, call, device, precision = args
                adapter = {a.op: a for a in ADAPTERS if not a.variant}[op]  # the eager call, in this process
                adapter.check_available(device)
                answer = ("ok", adapter.run(call, device, precision))
        except Unavailable as exc:
            answer = ("unavailable", str(exc))
        except Unsupported as exc:
            answer = ("unsupported", str(exc))
        except Exception as exc:
            answer = ("raised", type(exc).__name__, str(exc))
        payload = pickle.dumps(answer)
        answers.write(struct.pack("<Q", len(payload)) + payload)
        answers.flush()


class TensorFlowOneDnn(TensorFlowConv2d):
    own_environment = True

    def check_available(self, device: str) -> None:
        super().check_available(device)
        _child(self.variant).ready()

    def environment(self) -> dict[str, Any]:
        return _child(self.variant).request(("environment",))


class TensorFlowDerivative(DerivativeAdapter):
    """tf.GradientTape on the primary eager call (for atrous_conv2d that differentiates through its
    space_to_batch formulation, a gradient path of its own); the HVP nests a second tape around
    the first one's gradient."""

    primary: _TensorFlowAdapter

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        assert call.cotangent is not None and call.direction_input is not None and call.direction_kernel is not None
        tf = _tf()
        dtype = getattr(tf, call.dtype)
        _tf32_default()

        def tensor(array: np.ndarray) -> Any:
            return tf.cast(tf.constant(array.astype(np.float64)), dtype)

        with _placement(device, precision):
            x, w, dy = tensor(call.x), tensor(call.w), tensor(call.cotangent)
            wrt = 0 if self.with_respect_to == "input" else 1
            with tf.GradientTape() as outer:
                outer.watch([x, w])
                with tf.GradientTape() as inner:
                    inner.watch([x, w])
                    y = self.primary._call(tf, x, w, call)
                if self.order == 1:  # only the gradient asked for, as a user would write it
                    result = inner.gradient(y, [x, w][wrt], output_gradients=dy)
                else:
                    gx, gw = inner.gradient(y, [x, w], output_gradients=dy)
                    vx, vw = tensor(call.direction_input), tensor(call.direction_kernel)
                    product = tf.reduce_sum(gx * vx) + tf.reduce_sum(gw * vw)
            if self.order == 2:
                result = outer.gradient(product, [x, w][wrt])
        return result.numpy().astype(float_format(result.dtype.name).numpy_dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        wrt = "x_t" if self.with_respect_to == "input" else "w_t"
        lines = [
            "import tensorflow as tf",
            f"tf.config.experimental.enable_tensor_float_32_execution({precision != 'strict'})",
            f"with tf.device('/{device.upper()}:0'):",
            *(
                f"    {name}_t = tf.cast(tf.constant({name}, tf.float64), tf.{call.dtype})"
                for name in ("x", "w", "dy", *(("vx", "vw") if self.order == 2 else ()))
            ),
            "    with tf.GradientTape() as outer:",
            "        outer.watch([x_t, w_t])",
            "        with tf.GradientTape() as inner:",
            "            inner.watch([x_t, w_t])",
            f"            y = {self.primary._source(call)}",
        ]
        if self.order == 1:
            lines.append(f"    g = inner.gradient(y, {wrt}, output_gradients=dy_t)")
        else:
            lines += [
                "        gx, gw = inner.gradient(y, [x_t, w_t], output_gradients=dy_t)",
                "        product = tf.reduce_sum(gx * vx_t) + tf.reduce_sum(gw * vw_t)",
                f"    g = outer.gradient(product, {wrt})  # H v",
            ]
        return "\n".join(lines)


ATROUS_CONV2D, DEPTHWISE_CONV2D = TensorFlowAtrousConv2d(), TensorFlowDepthwiseConv2d()

ADAPTERS = (
    ATROUS_CONV2D,
    CONV2D,
    DEPTHWISE_CONV2D,
    *(cls("function") for cls in (TensorFlowAtrousConv2d, TensorFlowConv2d, TensorFlowDepthwiseConv2d)),
    TensorFlowConv2d("layer"),
    TensorFlowDepthwiseConv2d("layer"),
    TensorFlowOneDnn("onednn-on"),
    TensorFlowOneDnn("onednn-off"),
    TensorFlowAtrousEqualsConv2d(),
    TensorFlowZeroInserted(),
    TensorFlowExplicitPads(),
    TensorFlowNchw(),
    DeviceComparison(CONV2D),
    *(
        TensorFlowDerivative(primary, quantity)
        for primary in (ATROUS_CONV2D, CONV2D, DEPTHWISE_CONV2D)
        for quantity in QUANTITIES
    ),
)
