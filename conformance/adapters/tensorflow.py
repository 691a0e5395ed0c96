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
from collections.abc import Iterator
from functools import cache
from typing import Any

import numpy as np

from conformance.adapters.base import Adapter, CallParams, ConvCall, Unavailable
from conformance.dtypes import float_format


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

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        tf = _tf()
        dtype = getattr(tf, call.dtype)
        _tf32_default()  # read before the first change
        with _placement(device, precision):
            x = tf.cast(tf.constant(call.x.astype(np.float64)), dtype)
            w = tf.cast(tf.constant(call.w.astype(np.float64)), dtype)
            y = self._call(tf, x, w, call)
        return y.numpy().astype(float_format(y.dtype.name).numpy_dtype)

    def _call(self, tf: Any, x: Any, w: Any, call: ConvCall) -> Any:
        raise NotImplementedError

    def _source(self, call: ConvCall) -> str:
        raise NotImplementedError

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        tf32 = "False" if precision == "strict" else "True"
        return "\n".join(
            [
                "import tensorflow as tf",
                f"tf.config.experimental.enable_tensor_float_32_execution({tf32})",
                f"with tf.device('/{device.upper()}:0'):",
                f"    x_t = tf.cast(tf.constant(x, tf.float64), tf.{call.dtype})  # NHWC",
                f"    w_t = tf.cast(tf.constant(w, tf.float64), tf.{call.dtype})  # HWIO",
                f"    y = {self._source(call)}",
            ]
        )

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


ADAPTERS = (TensorFlowAtrousConv2d(), TensorFlowConv2d(), TensorFlowDepthwiseConv2d())
