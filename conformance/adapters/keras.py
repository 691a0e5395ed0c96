"""Keras 3: `keras.layers.Conv1D`/`Conv2D`/`Conv3D`, `DepthwiseConv1D`/`DepthwiseConv2D`, `SeparableConv1D`
and `Conv1DTranspose`/`Conv2DTranspose`/`Conv3DTranspose`, the layers people write, on every Keras backend
installed (TensorFlow, JAX, PyTorch). One class per layer family, one target per rank as Keras names
them; Conv1D also takes padding="causal", which a case states as CAUSAL.

Keras fixes its backend when it is first imported (`KERAS_BACKEND`), so every target here runs in
a child process started with it: the one mechanism of conformance/adapters/child.py, which the
oneDNN targets use too. In the child the layer is built as users build it: the constructor with
the case's geometry, `layer.build(input_shape)`, then the kernel's `assign`. Keras kernels are HWIO
in both data formats (our layout); a depthwise kernel is (k_h, k_w, C, multiplier), the reshape of
our (k_h, k_w, 1, C * multiplier) (output channel c * m + j reads input channel c in both).

Per backend and layer:
- the eager layer call;
- `@compiled`: a `keras.Sequential` around the layer, called by `predict_on_batch`, the compiled
  predict step that `model.predict` runs (a tf.function on TensorFlow, jax.jit on JAX; the torch
  backend runs it eagerly unless `jit_compile=True`, which means torch.compile: about 15 s per
  geometry here, so it is not a target);
- `@jit-compile` (TensorFlow): the same model after `compile(jit_compile=True)`, XLA. Keras'
  default "auto" turns XLA on only where TensorFlow sees a GPU: on a GPU `@compiled` is XLA too,
  and the two differ on the CPU only;
- `@channels-first`: `data_format="channels_first"` (the input transposed to NCHW, the kernel
  still HWIO);
- `@zero-padding` (Conv2D): pads written as Keras users write them, `ZeroPadding2D` before a
  `padding="valid"` layer: every case, SAME included (with the pads of DESIGN.md);
- `@grad-input`, `@grad-kernel`: the eager layer call differentiated by the backend's own
  autodiff (`tf.GradientTape`, `jax.vjp` over `layer.stateless_call`, `torch.autograd.grad`).

Keras layers take padding "valid" or "same" only, so the plain targets leave explicit-pad cases
to `@zero-padding`. A geometry that the layer's constructor refuses (Keras 3.15: strides > 1 with
dilation_rate > 1, on every backend alike) is `unsupported` in Keras' own words; what one backend
refuses at the call while the others compute it is an error, and a known divergence in
cases/expectations.toml. The child keeps each backend's defaults as users get them: on JAX that
means jax_enable_x64 is off, so a float64 layer silently computes in float32 (a divergence too).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import replace
from functools import cache
from typing import Any

import numpy as np

from conformance import compile_cache, composites, layouts
from conformance.adapters import padding
from conformance.adapters.base import (
    Adapter,
    CallParams,
    CallWrapper,
    ConvCall,
    DerivativeAdapter,
    FrameworkCall,
    Unavailable,
    Unsupported,
    Wrapper,
)
from conformance.adapters.child import InChildProcess
from conformance.adapters.modes import numpy_output
from conformance.adapters.program import (
    Assign,
    Attr,
    Call,
    Do,
    Expr,
    Import,
    Index,
    Lambda,
    Name,
    Once,
    Program,
    SetAttr,
    Statement,
    Value,
    With,
    invoke,
    method,
)
from conformance.composites import Composite
from conformance.frameworks import KERAS_JAX, KERAS_TENSORFLOW, KERAS_TORCH, Framework
from conformance.machine import FactValue
from conformance.semantics import CONV_TRANSPOSE, PadPairs, as_transposed

BACKENDS: dict[str, Framework] = {"tensorflow": KERAS_TENSORFLOW, "jax": KERAS_JAX, "torch": KERAS_TORCH}
BACKEND_VARIABLE = "KERAS_BACKEND"
KERNEL = Attr(Name("layer"), "kernel")
# The kernel is assigned right after `build`: Keras' default random initializer would only cost
# (on JAX, a compilation of the random draw for every kernel shape: 80 ms a check, against 4).
INITIALIZER = "zeros"


@cache
def _keras(backend: str) -> Any:
    """Keras, imported in this process with `backend` (a child started with KERAS_BACKEND set)."""
    os.environ.setdefault(BACKEND_VARIABLE, backend)
    if backend == "tensorflow":  # (read when XLA first compiles: `@jit-compile`)
        compile_cache.point_tensorflow(KERAS_TENSORFLOW)
    try:
        import keras
    except Exception as exc:  # Keras, or its backend, missing or broken: Keras raises at import
        raise Unavailable(f"Keras on {backend} cannot be imported ({type(exc).__name__}: {exc})") from None
    if keras.backend.backend() != backend:
        raise Unavailable(f"this process's Keras runs on {keras.backend.backend()}, not {backend}")
    if backend == "jax":  # every eager call and compiled step compiles a program per geometry
        import jax

        compile_cache.point_jax(jax, KERAS_JAX)
    if backend == "tensorflow":
        import tensorflow as tf

        # Every geometry's model traces its own predict step, by design: TF's retracing warning
        # for each of them is noise on the run's stderr.
        tf.get_logger().setLevel("ERROR")
    return keras


def _gpu_visible(backend: str) -> bool:
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import torch

    return bool(torch.cuda.is_available())


def _precision(backend: str, device: str, precision: str) -> list[Statement]:
    """TF32 on a GPU: off in strict mode, the backend's default otherwise (Keras has no switch of
    its own; one child serves both modes, so each check states its own)."""
    if device != "gpu":
        return []
    strict = precision == "strict"
    if backend == "tensorflow":
        return [
            Import("tensorflow", "tf"),
            Do(invoke("tf.config.experimental.enable_tensor_float_32_execution", not strict)),
        ]
    if backend == "jax":
        return [
            Import("jax"),
            Do(invoke("jax.config.update", "jax_default_matmul_precision", "highest" if strict else None)),
        ]
    return [Import("torch"), SetAttr("torch.backends.cudnn.allow_tf32", not strict)]  # (True is torch's default)


def _tensor(name: str, source: Expr, dtype: str, comment: str = "") -> Assign:
    return Assign(name, invoke("keras.ops.convert_to_tensor", source, dtype=dtype), comment)


class _KerasLayer(FrameworkCall):
    """One Keras layer on one backend, run in a process whose Keras has that backend: `tensors` builds
    the layer (its kernel assigned) and the input `x_t`, `invocation` calls the layer."""

    family: str  # the layer's name with {rank}: "Conv{rank}D", "DepthwiseConv{rank}D" or "Conv{rank}DTranspose"

    def __init__(self, backend: str, rank: int = 2) -> None:
        self.backend, self.rank, self.ranks = backend, rank, (rank,)
        self.layer_class = self.family.format(rank=rank)
        self.framework, self.op = BACKENDS[backend], self.layer_class

    # -- what differs between the layers --

    def layer_arguments(self, call: ConvCall, explicit_pads: bool) -> dict[str, Any]:
        raise NotImplementedError

    def kernel_value(self, call: ConvCall, kernel: Expr) -> Expr:
        """The case's (*spatial, I, O) kernel `kernel` in the layer's own kernel layout."""
        return kernel

    # -- the layer, as users build it --

    def padding_word(self, call: CallParams | ConvCall) -> str | None:
        """The layer's word for the case's padding: "valid", "same", and "causal" for Conv1D only."""
        if call.padding == "CAUSAL" and self.layer_class == "Conv1D":
            return "causal"
        word = padding.native_word(call.padding)
        return word.lower() if word else None

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if self.padding_word(call_params) is None:
            target = f"{self.framework.name}.{self.layer_class}@zero-padding"
            where = f" (the {target} target)" if self.family == "Conv{rank}D" else ""
            causal = ', or "causal" (Conv1D only)' if self.rank == 1 else ""
            return (
                f'keras.layers.{self.layer_class} takes padding "valid" or "same"{causal}; Keras users write explicit '
                f"pads as ZeroPadding{self.rank}D before a valid layer{where}"
            )
        return None

    def layer(self, call: ConvCall, data_format: str = "channels_last", explicit_pads: bool = False) -> Call:
        """The constructor; with `explicit_pads` a "valid" layer, the pads written around it."""
        return invoke(
            f"keras.layers.{self.layer_class}",
            **self.layer_arguments(call, explicit_pads),
            strides=tuple(call.stride),
            padding="valid" if explicit_pads else self.padding_word(call),
            data_format=data_format,
            dilation_rate=tuple(call.rate),
            use_bias=False,
            dtype=call.dtype,
        )

    def built_layer(
        self, call: ConvCall, kernel: Expr, data_format: str = "channels_last", explicit_pads: bool = False
    ) -> list[Statement]:
        """`layer`, built for the input's shape (as the layer takes it) and given the case's kernel."""
        n, *spatial, c = call.x.shape
        if explicit_pads and self.operation != CONV_TRANSPOSE:  # (the input arrives padded)
            spatial = [size + before + after for size, (before, after) in zip(spatial, call.geometry.pads, strict=True)]
        shape = (n, c, *spatial) if data_format == "channels_first" else (n, *spatial, c)
        return [
            Assign("layer", self.layer(call, data_format, explicit_pads)),
            Do(method("layer", "build", shape)),
            *self.kernel_assignments(call, kernel, Name("layer")),
        ]

    def kernel_assignments(self, call: ConvCall, kernel: Expr, layer: Expr) -> list[Statement]:
        """The case's kernel assigned to the built `layer`'s weights, in Keras' own layout."""
        return [
            Do(method(Attr(layer, "kernel"), "assign", self.kernel_value(call, kernel)), "Keras' own kernel layout")
        ]

    def prelude(self, device: str, precision: str) -> list[Statement]:
        """The import, and the precision mode's TF32 setting of the backend."""
        return [Import("keras"), *_precision(self.backend, device, precision)]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        return [*self.built_layer(call, kernel), _tensor("x_t", Name("x"), call.dtype, "NHWC")]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return invoke("layer", Name("x_t"))

    def placed(self, device: str, statements: list[Statement]) -> list[Statement]:
        return [With(invoke("keras.device", f"{device}:0"), tuple(statements))]

    # -- running in the child --

    def check_available(self, device: str) -> None:
        keras = _keras(self.backend)
        if device == "gpu" and not _gpu_visible(self.backend):
            raise Unavailable(f"no GPU visible to Keras {keras.__version__} on {self.backend}")

    def refuse(self, call: ConvCall) -> None:
        self.refuse_layer(self.layer(call))

    def refuse_layer(self, layer: Call) -> None:
        """The constructor alone: what it refuses, it refuses on every backend alike (`Unsupported`)."""
        try:
            layer.evaluate({"keras": _keras(self.backend)})
        except ValueError as exc:
            raise Unsupported(f"keras.layers.{self.layer_class} refuses it: {exc}") from None

    def to_numpy(self, value: Any) -> np.ndarray:
        keras = _keras(self.backend)
        return numpy_output(keras.ops.convert_to_numpy(value), keras.backend.standardize_dtype(value.dtype))

    def runtime_facts(self) -> dict[str, FactValue]:
        """The backend's facts: its kernels are the backend's (oneDNN in TensorFlow and torch)."""
        if self.backend == "tensorflow":
            from conformance.adapters import tensorflow  # (loaded already: Keras runs on it)

            return tensorflow.runtime_facts()
        if self.backend == "torch":
            from conformance.adapters import pytorch

            return pytorch.runtime_facts()
        return {}

    def environment(self) -> dict[str, Any]:
        keras = _keras(self.backend)
        return {
            "version": keras.__version__,
            "backend": self.backend,
            "backend_version": self.framework.backend_version(),
            "devices": ["cpu"] + (["gpu"] if _gpu_visible(self.backend) else []),
            "flags": {
                BACKEND_VARIABLE: os.environ.get(BACKEND_VARIABLE, "(unset)"),
                "floatx": keras.config.floatx(),
                "image_data_format (default)": keras.config.image_data_format(),
            },
        }


class KerasConv(_KerasLayer):
    family = "Conv{rank}D"

    def __init__(self, backend: str, rank: int = 2) -> None:
        super().__init__(backend, rank)
        # The 2-D layer runs the composites as whole Keras models, through the eager call.
        self.runs_models = rank == 2

    def model_graph(self, dtype: str) -> ModelGraph:
        """What builds the composite's layers (a test's broken builder overrides it)."""
        return ModelGraph(dtype)

    def describe_model(
        self, composite: Composite, dtype: str, device: str, precision: str, compiled: Compiled | None = None
    ) -> Program:
        """The composite as a functional Keras model of Conv2D, ReLU, GlobalAveragePooling2D,
        UpSampling2D and Concatenate layers, described once: it runs as `run_model` and prints as
        the reproduction, like every single-layer call. Called eagerly, or as `compiled` calls it."""
        graph = self.model_graph(dtype)
        output = composites.build(composite, graph, "inputs")
        n, h, w, c = composites.composite_input(composite).shape
        answer = method("model", "predict_on_batch", Name("x")) if compiled else invoke("model", Name("x"))
        body: list[Statement] = [
            Assign("inputs", invoke("keras.Input", shape=(h, w, c), batch_size=n, dtype=dtype)),
            *graph.statements,
            Assign("model", invoke("keras.Model", Name("inputs"), Name(output))),
            *(compiled.compile_steps() if compiled else []),
            Assign("y", answer),
        ]
        fields = {field.name: getattr(composite, field.name) for field in dataclasses.fields(composite)}
        return Program(
            (
                *self.prelude(device, precision),
                Import("conformance", names=("composites",)),
                Assign("composite", invoke("composites.Composite", **fields)),
                Assign("x", invoke("composites.composite_input", Name("composite")), "NHWC, float64"),
                Assign("kernels", invoke("composites.kernels", Name("composite")), "HWIO, in the layers' order"),
                *self.placed(device, body),
            )
        )

    def model_reproduction(self, composite: Composite, dtype: str, device: str, precision: str) -> str:
        return self.describe_model(composite, dtype, device, precision).source()

    def run_model(self, composite: Composite, dtype: str, device: str, precision: str) -> np.ndarray:
        return self.to_numpy(self.describe_model(composite, dtype, device, precision).run({}))

    def layer_arguments(self, call: ConvCall, explicit_pads: bool) -> dict[str, Any]:
        *taps, _, out_channels = call.w.shape
        return {
            "filters": out_channels, "kernel_size": tuple(taps), "groups": call.groups,
            "kernel_initializer": INITIALIZER,
        }  # fmt: skip


class KerasDepthwiseConv(_KerasLayer):
    family = "DepthwiseConv{rank}D"  # (Keras has 1-D and 2-D ones)

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        channels = call_params.input_shape[-1]
        if call_params.groups != channels or call_params.kernel_shape[-2] != 1:
            return f"keras.layers.{self.layer_class} is only for depthwise convolution (groups = input channels)"
        return super().unsupported_reason(call_params)

    def layer_arguments(self, call: ConvCall, explicit_pads: bool) -> dict[str, Any]:
        *taps, _, out_channels = call.w.shape
        return {
            "kernel_size": tuple(taps), "depth_multiplier": out_channels // call.x.shape[-1],
            "depthwise_initializer": INITIALIZER,
        }  # fmt: skip

    def kernel_value(self, call: ConvCall, kernel: Expr) -> Expr:
        """Our (k_h, k_w, 1, C * m) is the reshape of Keras' (k_h, k_w, C, m): output channel c * m + j
        reads input channel c in both."""
        *taps, _, out_channels = call.w.shape
        channels = call.x.shape[-1]
        return method(kernel, "reshape", *taps, channels, out_channels // channels)


class KerasSeparableConv(KerasDepthwiseConv):
    """`keras.layers.SeparableConv1D`: a depthwise convolution, then a pointwise (1-tap) one. The case's
    depthwise kernel is its depthwise kernel and the pointwise kernel is the identity, so the layer
    computes the case through Keras' separable path (tf.nn.separable_conv2d on TensorFlow, two
    convolutions on JAX and torch); a wrong pointwise step or a depthwise kernel read in another
    layout shows."""

    family = "SeparableConv{rank}D"

    def layer_arguments(self, call: ConvCall, explicit_pads: bool) -> dict[str, Any]:
        *taps, _, out_channels = call.w.shape
        return {
            "filters": out_channels, "kernel_size": tuple(taps), "depth_multiplier": out_channels // call.x.shape[-1],
            "depthwise_initializer": INITIALIZER, "pointwise_initializer": INITIALIZER,
        }  # fmt: skip

    def kernel_assignments(self, call: ConvCall, kernel: Expr, layer: Expr) -> list[Statement]:
        out_channels, rank = call.w.shape[-1], len(call.rate)
        identity = invoke(
            "keras.ops.reshape", invoke("keras.ops.eye", out_channels), (*(1,) * rank, out_channels, out_channels)
        )
        return [
            Do(method(Attr(layer, "depthwise_kernel"), "assign", self.kernel_value(call, kernel)), "Keras' layout"),
            Do(method(Attr(layer, "pointwise_kernel"), "assign", identity), "the identity: the depthwise result as is"),
        ]


class KerasConvTranspose(_KerasLayer):
    """`keras.layers.Conv{1,2,3}DTranspose`: its kernel (*spatial, filters, C_in) is the case's as it
    stands. "same" and "valid" with output_padding unset follow Keras' `deconv_output_length`
    (TensorFlow's rule, the semantics' SAME and VALID); `@cropping` writes explicit crops as Keras users do."""

    family = "Conv{rank}DTranspose"
    operation = CONV_TRANSPOSE

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if call_params.groups != 1:
            return f"keras.layers.{self.layer_class} has no groups"
        if self.padding_word(call_params) is None:
            return (
                f'keras.layers.{self.layer_class} takes padding "valid" or "same"; Keras users write explicit crops '
                f"as Cropping{self.rank}D after a valid layer (the {self.framework.name}.{self.layer_class}@cropping "
                "target)"
            )
        return None

    def layer_arguments(self, call: ConvCall, explicit_pads: bool) -> dict[str, Any]:
        *taps, out_channels, _ = call.w.shape
        extra = list(as_transposed(call.geometry).output_padding) if explicit_pads else None
        return {
            "filters": out_channels, "kernel_size": tuple(taps), "output_padding": extra,
            "kernel_initializer": INITIALIZER,
        }  # fmt: skip


class Compiled(CallWrapper):
    """A `keras.Sequential` around the layer, called by `predict_on_batch`: the compiled predict step
    that `model.predict` runs (a tf.function on TensorFlow, jax.jit on JAX; the torch backend runs it
    eagerly unless `jit_compile=True`, which means torch.compile: about 15 s per geometry here, so it is
    not a target). With `jit_compile` (TensorFlow): the model after `compile(jit_compile=True)`, XLA.
    Built (and compiled) once per geometry and reused by every check that shares it, as a served model
    is; each check assigns its own kernel."""

    inner: _KerasLayer

    def __init__(self, inner: _KerasLayer, jit_compile: bool = False) -> None:
        super().__init__(inner, "jit-compile" if jit_compile else "compiled")
        self.jit_compile = jit_compile
        self.runs_models = inner.runs_models

    def compile_steps(self) -> list[Statement]:
        return [Do(method("model", "compile", jit_compile=True))] if self.jit_compile else []

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        n, *spatial, c = call.x.shape
        model_input = invoke("keras.Input", shape=(*spatial, c), batch_size=n, dtype=call.dtype)
        build = [
            Assign("model", invoke("keras.Sequential", [model_input, self.inner.layer(call)])),
            *self.compile_steps(),
        ]
        layer = Index(Attr(Name("model"), "layers"), -1)
        return [
            Once(tuple(build), context=(device, precision)),  # TF32 is captured when it compiles
            *self.inner.kernel_assignments(call, kernel, layer),
        ]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return method("model", "predict_on_batch", Name("x"))

    def describe_model(self, composite: Composite, dtype: str, device: str, precision: str) -> Program:
        assert isinstance(self.inner, KerasConv)
        return self.inner.describe_model(composite, dtype, device, precision, self)

    def model_reproduction(self, composite: Composite, dtype: str, device: str, precision: str) -> str:
        return self.describe_model(composite, dtype, device, precision).source()

    def run_model(self, composite: Composite, dtype: str, device: str, precision: str) -> np.ndarray:
        return self.to_numpy(self.describe_model(composite, dtype, device, precision).run({}))


class ChannelsFirst(CallWrapper):
    """`data_format="channels_first"`: the input transposed to NCHW, the kernel still HWIO."""

    inner: _KerasLayer

    def __init__(self, inner: _KerasLayer) -> None:
        super().__init__(inner, "channels-first")

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        rank = len(call.rate)
        first = method("x", "transpose", *layouts.channels_first(rank))
        return [*self.inner.built_layer(call, kernel, "channels_first"), _tensor("x_t", first, call.dtype, "NCHW")]

    def read_back(self, call: ConvCall, result: Expr) -> Expr:
        return invoke("keras.ops.transpose", result, layouts.channels_last(len(call.rate)))

    def refuse(self, call: ConvCall) -> None:
        self.inner.refuse_layer(self.inner.layer(call, "channels_first"))


class _PadsTheKerasWay(CallWrapper):
    """A "valid" layer, the case's pads (or crops) written around it in Keras' own layers: every
    padding a case states, SAME included (with the pads of DESIGN.md)."""

    inner: _KerasLayer

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return self.inner.unsupported_reason(replace(call_params, padding="VALID"))

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        layer = self.inner.built_layer(call, kernel, explicit_pads=True)
        return [*layer, _tensor("x_t", Name("x"), call.dtype, "NHWC")]

    def refuse(self, call: ConvCall) -> None:
        self.inner.refuse_layer(self.inner.layer(call, explicit_pads=True))


def _per_axis_layer_argument(pads: PadPairs) -> PadPairs | tuple[int, int]:
    """ZeroPaddingND's `padding` and CroppingND's `cropping`: one (before, after) per axis, except in 1-D,
    where the layers take the pair alone and no data_format."""
    return pads[0] if len(pads) == 1 else pads


def _data_format(rank: int) -> dict[str, str]:
    return {} if rank == 1 else {"data_format": "channels_last"}


class ZeroPadding(_PadsTheKerasWay):
    """Pads as Keras users write them: `ZeroPadding1D`, `2D` or `3D` before the layer."""

    def __init__(self, inner: _KerasLayer) -> None:
        super().__init__(inner, "zero-padding")

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        rank = len(call.rate)
        zero_padding = invoke(
            f"keras.layers.ZeroPadding{rank}D", padding=_per_axis_layer_argument(call.geometry.pads),
            **_data_format(rank), dtype=call.dtype,
        )  # fmt: skip
        padded = Assign("x_t", invoke(zero_padding, Name("x_t")), "explicit pads, the Keras way")
        return [*super().tensors(call, kernel, device, precision), padded]


class Cropping(_PadsTheKerasWay):
    """Crops as Keras users write them: a `ConvNDTranspose` with `output_padding`, then `CroppingND`."""

    def __init__(self, inner: _KerasLayer) -> None:
        super().__init__(inner, "cropping")

    def read_back(self, call: ConvCall, result: Expr) -> Expr:
        rank = len(call.rate)
        cropping = invoke(
            f"keras.layers.Cropping{rank}D", cropping=_per_axis_layer_argument(call.geometry.pads),
            **_data_format(rank), dtype=call.dtype,
        )  # fmt: skip
        return invoke(cropping, result)


class ModelGraph:
    """A composites.Graph whose values are variable names: each layer applied is a statement of the
    functional model; a convolution's kernel is assigned once calling it built it."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.statements: list[Statement] = []
        self.kernels = 0
        self.values = 0

    def _name(self) -> str:
        self.values += 1
        return f"t{self.values - 1}"

    def _apply(self, layer: str, inputs: Value, data_format: bool = True, **arguments: Value) -> str:
        name = self._name()
        # Every layer states its data format: unstated, it is the user's ~/.keras/keras.json default.
        common = {"data_format": "channels_last"} if data_format else {}
        built = invoke(f"keras.layers.{layer}", **arguments, **common, dtype=self.dtype)
        self.statements.append(Assign(name, invoke(built, inputs)))
        return name

    def conv(self, x: str, w: np.ndarray, rate: int) -> str:
        k_h, k_w, _, out_channels = w.shape
        layer, name, number = f"conv{self.kernels}", self._name(), self.kernels
        self.statements += [
            Assign(
                layer,
                invoke(
                    "keras.layers.Conv2D", out_channels, (k_h, k_w), padding="same", dilation_rate=rate,
                    use_bias=False, kernel_initializer=INITIALIZER, data_format="channels_last", dtype=self.dtype,
                ),
            ),
            Assign(name, invoke(layer, Name(x))),
            Do(method(f"{layer}.kernel", "assign", Index(Name("kernels"), number))),
        ]  # fmt: skip
        self.kernels += 1
        return name

    def relu(self, x: str) -> str:
        return self._apply("ReLU", Name(x), data_format=False)

    def global_mean(self, x: str) -> str:
        return self._apply("GlobalAveragePooling2D", Name(x), keepdims=True)

    def broadcast(self, x: str, size: int) -> str:
        return self._apply("UpSampling2D", Name(x), size=size)  # nearest: the 1x1 map repeated

    def concat(self, xs: list[str]) -> str:
        return self._apply("Concatenate", [Name(x) for x in xs], data_format=False, axis=-1)


class KerasGradient(DerivativeAdapter):
    """The eager layer call's gradient of <y, dy>, by the backend's own autodiff: the path
    training takes (for JAX, Keras' stateless call, which is what its trainer differentiates)."""

    inner: _KerasLayer

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        layer, backend = self.inner, self.inner.backend
        wrt_input = self.with_respect_to == "input"
        setup = [*layer.tensors(call, layer.kernel(call), device, precision), _tensor("dy_t", Name("dy"), call.dtype)]
        kernel = Attr(KERNEL, "value")
        wrt = Name("x_t") if wrt_input else kernel
        if backend == "tensorflow":
            taped = With(
                invoke("tf.GradientTape"),
                (Do(method("tape", "watch", Name("x_t"))), Assign("y", layer.invocation(call, precision))),
                "tape",
            )
            body: list[Statement] = [
                taped,
                Assign("g", method("tape", "gradient", Name("y"), wrt, output_gradients=Name("dy_t"))),
            ]
            imports: list[Statement] = [Import("tensorflow", "tf")]
        elif backend == "jax":
            stateless = Lambda(
                ("x_t", "kernel"), Index(method("layer", "stateless_call", [Name("kernel")], [], Name("x_t")), 0)
            )
            body = [
                Assign("y, pullback", invoke("jax.vjp", stateless, Name("x_t"), kernel)),
                Assign("gx, gw", invoke("pullback", Name("dy_t"))),
                Assign("g", Name("gx" if wrt_input else "gw")),
            ]
            imports = [Import("jax")]
        else:
            body = [
                Do(method("x_t", "requires_grad_")),
                Assign("y", layer.invocation(call, precision)),
                Assign("(g,)", invoke("torch.autograd.grad", Name("y"), [wrt], grad_outputs=Name("dy_t"))),
            ]
            imports = [Import("torch")]
        if not wrt_input and isinstance(layer, KerasDepthwiseConv):
            *taps, _, out_channels = call.w.shape
            body.append(Assign("g", invoke("keras.ops.reshape", Name("g"), (*taps, 1, out_channels)), "HWIO"))
        program = (*imports, *layer.prelude(device, precision), *layer.placed(device, [*setup, *body]))
        return Program(program, result="g")


GRADIENTS = ("grad-input", "grad-kernel")


def _backend_of(adapter: Adapter) -> str:
    while isinstance(adapter, Wrapper):
        adapter = adapter.inner
    assert isinstance(adapter, _KerasLayer), adapter
    return adapter.backend


def in_child(inner: Adapter, devices: tuple[str, ...] | None = None) -> InChildProcess:
    """`inner` as a target: run in a process whose Keras was imported with its backend."""
    environment = {BACKEND_VARIABLE: _backend_of(inner)}
    return InChildProcess(inner, inner.variant, environment, devices=devices or inner.devices)


def _backend_targets(backend: str, rank: int) -> list[InChildProcess]:
    conv, transpose = KerasConv(backend, rank), KerasConvTranspose(backend, rank)
    depthwise = [KerasDepthwiseConv(backend, rank)] if rank in DEPTHWISE_RANKS else []
    # SeparableConv1D: the 1-D depthwise cases through Keras' separable path (its 2-D twin would only
    # repeat DepthwiseConv2D's checks on every 2-D case).
    separable = [KerasSeparableConv(backend, rank)] if rank == 1 else []
    adapters: list[Adapter] = [
        conv, Compiled(conv), ChannelsFirst(conv), ZeroPadding(conv),
        *(mode for layer in depthwise for mode in (layer, Compiled(layer), ChannelsFirst(layer))),
        *(mode for layer in separable for mode in (layer, Compiled(layer))),
        transpose, Compiled(transpose), ChannelsFirst(transpose), Cropping(transpose),
    ]  # fmt: skip
    if backend == "tensorflow":
        # Keras' default "auto" turns XLA on only where TensorFlow sees a GPU: on a GPU `@compiled` is
        # XLA too, and the two differ on the CPU only.
        adapters.append(Compiled(conv, jit_compile=True))
    primaries = (conv, *depthwise, transpose)
    adapters += [KerasGradient(primary, quantity) for primary in primaries for quantity in GRADIENTS]
    return [in_child(adapter) for adapter in adapters]


RANKS = (1, 2, 3)
DEPTHWISE_RANKS = (1, 2)  # Keras has no DepthwiseConv3D
ADAPTERS = tuple(target for backend in BACKENDS for rank in RANKS for target in _backend_targets(backend, rank))
