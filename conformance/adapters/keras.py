"""Keras 3: `keras.layers.Conv2D`, `keras.layers.DepthwiseConv2D` and `keras.layers.Conv2DTranspose`,
the layers people write, on every Keras backend installed (TensorFlow, JAX, PyTorch).

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
from functools import cache
from typing import Any

import numpy as np

from conformance import composites
from conformance.adapters import padding
from conformance.adapters.base import (
    CallParams,
    ConvCall,
    DerivativeAdapter,
    DescribedAdapter,
    Unavailable,
    Unsupported,
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
from conformance.semantics import CONV_TRANSPOSE, as_transposed

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
    try:
        import keras
    except Exception as exc:  # Keras, or its backend, missing or broken: Keras raises at import
        raise Unavailable(f"Keras on {backend} cannot be imported ({type(exc).__name__}: {exc})") from None
    if keras.backend.backend() != backend:
        raise Unavailable(f"this process's Keras runs on {keras.backend.backend()}, not {backend}")
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


class _KerasLayer(DescribedAdapter):
    """One Keras layer on one backend, run in a process whose Keras has that backend."""

    layer_class: str  # "Conv2D", "DepthwiseConv2D" or "Conv2DTranspose"
    # The variant that writes explicit pads around a "valid" layer (ZeroPadding2D before it, Cropping2D after).
    explicit_pads_variant = "zero-padding"

    def __init__(self, backend: str, variant: str = "") -> None:
        self.backend, self.variant = backend, variant
        self.framework, self.op = BACKENDS[backend], self.layer_class

    # -- what differs between the two layers --

    def layer_arguments(self, call: ConvCall) -> dict[str, Any]:
        raise NotImplementedError

    def kernel_value(self, call: ConvCall) -> Expr:
        """The case's HWIO kernel in the layer's own kernel layout."""
        return Name("w")

    # -- the layer, as users build it --

    @property
    def channels_first(self) -> bool:
        return self.variant == "channels-first"

    def padding_word(self, call: CallParams | ConvCall) -> str | None:
        if self.variant == self.explicit_pads_variant:
            return "valid"
        word = padding.native_word(call.padding)
        return word.lower() if word else None

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if self.padding_word(call_params) is None:
            where = f" (the {self.framework.name}.Conv2D@zero-padding target)" if self.layer_class == "Conv2D" else ""
            return (
                f'keras.layers.{self.layer_class} takes padding "valid" or "same"; Keras users write explicit '
                f"pads as ZeroPadding2D before a valid layer{where}"
            )
        return None

    def layer(self, call: ConvCall) -> Call:
        data_format = "channels_first" if self.channels_first else "channels_last"
        return invoke(
            f"keras.layers.{self.layer_class}",
            **self.layer_arguments(call),
            strides=tuple(call.stride),
            padding=self.padding_word(call),
            data_format=data_format,
            dilation_rate=tuple(call.rate),
            use_bias=False,
            dtype=call.dtype,
        )

    def input_shape(self, call: ConvCall) -> tuple[int, ...]:
        n, h, w, c = call.x.shape
        if self.variant == "zero-padding":
            (top, bottom), (left, right) = call.geometry.pads
            h, w = h + top + bottom, w + left + right
        return (n, c, h, w) if self.channels_first else (n, h, w, c)

    def input_tensor(self, call: ConvCall) -> list[Statement]:
        """`x_k`, the input as the layer takes it (NCHW for channels-first, padded for zero-padding)."""
        if self.channels_first:
            return [_tensor("x_k", method("x", "transpose", 0, 3, 1, 2), call.dtype, "NCHW")]
        tensor = _tensor("x_k", Name("x"), call.dtype, "NHWC")
        if self.variant != "zero-padding":
            return [tensor]
        (top, bottom), (left, right) = call.geometry.pads
        zero_padding = invoke(
            "keras.layers.ZeroPadding2D",
            padding=((top, bottom), (left, right)),
            data_format="channels_last",
            dtype=call.dtype,
        )
        return [tensor, Assign("x_k", invoke(zero_padding, Name("x_k")), "explicit pads, the Keras way")]

    def built_layer(self, call: ConvCall) -> list[Statement]:
        return [
            Assign("layer", self.layer(call)),
            Do(method("layer", "build", self.input_shape(call))),
            Do(method(KERNEL, "assign", self.kernel_value(call)), "Keras' own kernel layout"),
        ]

    def forward(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        """`y` (NHWC) from the built layer and the case's data."""
        if self.variant in ("compiled", "jit-compile"):
            return self.compiled(call, device, precision)
        statements = [*self.built_layer(call), *self.input_tensor(call)]
        if not self.channels_first:
            return [*statements, Assign("y", invoke("layer", Name("x_k")))]
        return [
            *statements,
            Assign("y_nchw", invoke("layer", Name("x_k"))),
            Assign("y", invoke("keras.ops.transpose", Name("y_nchw"), (0, 2, 3, 1)), "NHWC"),
        ]

    def compiled(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        """A model around the layer, built (and compiled) once per geometry and reused by every
        check that shares it, as a served model is; each check assigns its own kernel."""
        n, h, w, c = call.x.shape
        model_input = invoke("keras.Input", shape=(h, w, c), batch_size=n, dtype=call.dtype)
        build: list[Statement] = [Assign("model", invoke("keras.Sequential", [model_input, self.layer(call)]))]
        if self.variant == "jit-compile":
            build.append(Do(method("model", "compile", jit_compile=True)))
        layer = Index(Attr(Name("model"), "layers"), -1)
        return [
            Once(tuple(build), context=(device, precision)),  # TF32 is captured when it compiles
            Do(method(Attr(layer, "kernel"), "assign", self.kernel_value(call)), "Keras' own kernel layout"),
            Assign("y", method("model", "predict_on_batch", Name("x"))),
        ]

    def placed(
        self, body: list[Statement], device: str, precision: str, imports: tuple[Statement, ...] = ()
    ) -> tuple[Statement, ...]:
        """The imports, the precision mode's TF32 setting, then `body` on the device."""
        return (
            Import("keras"),
            *imports,
            *_precision(self.backend, device, precision),
            With(invoke("keras.device", f"{device}:0"), tuple(body)),
        )

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        return Program(self.placed(self.forward(call, device, precision), device, precision))

    # -- running in the child --

    def check_available(self, device: str) -> None:
        keras = _keras(self.backend)
        if device == "gpu" and not _gpu_visible(self.backend):
            raise Unavailable(f"no GPU visible to Keras {keras.__version__} on {self.backend}")

    def refuse_what_keras_refuses(self, call: ConvCall) -> None:
        """The constructor alone: what it refuses, it refuses on every backend alike (`Unsupported`)."""
        try:
            self.layer(call).evaluate({"keras": _keras(self.backend)})
        except ValueError as exc:
            raise Unsupported(f"keras.layers.{self.layer_class} refuses it: {exc}") from None

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        self.refuse_what_keras_refuses(call)
        return super().run(call, device, precision)

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


class KerasConv2D(_KerasLayer):
    layer_class = "Conv2D"

    def __init__(self, backend: str, variant: str = "") -> None:
        super().__init__(backend, variant)
        # The composites run as whole Keras models through the eager call and the compiled ones.
        self.runs_models = variant in MODEL_VARIANTS

    def model_graph(self, dtype: str) -> ModelGraph:
        """What builds the composite's layers (a test's broken builder overrides it)."""
        return ModelGraph(dtype)

    def describe_model(self, composite: Composite, dtype: str, device: str, precision: str) -> Program:
        """The composite as a functional Keras model of Conv2D, ReLU, GlobalAveragePooling2D,
        UpSampling2D and Concatenate layers, described once: it runs as `run_model` and prints as
        the reproduction, like every single-layer call."""
        graph = self.model_graph(dtype)
        output = composites.build(composite, graph, "inputs")
        n, h, w, c = composites.composite_input(composite).shape
        compiled = self.variant in ("compiled", "jit-compile")  # model.predict_on_batch, or the eager call
        answer = method("model", "predict_on_batch", Name("x")) if compiled else invoke("model", Name("x"))
        body: list[Statement] = [
            Assign("inputs", invoke("keras.Input", shape=(h, w, c), batch_size=n, dtype=dtype)),
            *graph.statements,
            Assign("model", invoke("keras.Model", Name("inputs"), Name(output))),
            *([Do(method("model", "compile", jit_compile=True))] if self.variant == "jit-compile" else []),
            Assign("y", answer),
        ]
        fields = {field.name: getattr(composite, field.name) for field in dataclasses.fields(composite)}
        return Program(
            (
                Import("keras"),
                Import("conformance", names=("composites",)),
                *_precision(self.backend, device, precision),
                Assign("composite", invoke("composites.Composite", **fields)),
                Assign("x", invoke("composites.composite_input", Name("composite")), "NHWC, float64"),
                Assign("kernels", invoke("composites.kernels", Name("composite")), "HWIO, in the layers' order"),
                With(invoke("keras.device", f"{device}:0"), tuple(body)),
            )
        )

    def model_reproduction(self, composite: Any, dtype: str, device: str, precision: str) -> str:
        return self.describe_model(composite, dtype, device, precision).source()

    def run_model(self, composite: Any, dtype: str, device: str, precision: str) -> np.ndarray:
        return self.to_numpy(self.describe_model(composite, dtype, device, precision).run({}))

    def layer_arguments(self, call: ConvCall) -> dict[str, Any]:
        k_h, k_w, _, out_channels = call.w.shape
        return {
            "filters": out_channels, "kernel_size": (k_h, k_w), "groups": call.groups,
            "kernel_initializer": INITIALIZER,
        }  # fmt: skip


class KerasDepthwiseConv2D(_KerasLayer):
    layer_class = "DepthwiseConv2D"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        channels = call_params.input_shape[3]
        if call_params.groups != channels or call_params.kernel_shape[2] != 1:
            return "keras.layers.DepthwiseConv2D is only for depthwise convolution (groups = input channels)"
        return super().unsupported_reason(call_params)

    def layer_arguments(self, call: ConvCall) -> dict[str, Any]:
        k_h, k_w, _, out_channels = call.w.shape
        return {
            "kernel_size": (k_h, k_w), "depth_multiplier": out_channels // call.x.shape[3],
            "depthwise_initializer": INITIALIZER,
        }  # fmt: skip

    def kernel_value(self, call: ConvCall) -> Expr:
        k_h, k_w, _, out_channels = call.w.shape
        channels = call.x.shape[3]
        return method("w", "reshape", k_h, k_w, channels, out_channels // channels)


class KerasConv2DTranspose(_KerasLayer):
    """`keras.layers.Conv2DTranspose`: its kernel (k_h, k_w, filters, C_in) is the case's as it stands.
    "same" and "valid" with output_padding unset follow Keras' `deconv_output_length` (TensorFlow's
    rule, the semantics' SAME and VALID); `@cropping` writes explicit crops as Keras users do, a
    "valid" layer with `output_padding` and then `Cropping2D`."""

    layer_class = "Conv2DTranspose"
    operation = CONV_TRANSPOSE
    explicit_pads_variant = "cropping"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if call_params.groups != 1:
            return "keras.layers.Conv2DTranspose has no groups"
        if self.padding_word(call_params) is None:
            return (
                f'keras.layers.Conv2DTranspose takes padding "valid" or "same"; Keras users write explicit crops as '
                f"Cropping2D after a valid layer (the {self.framework.name}.Conv2DTranspose@cropping target)"
            )
        return None

    def layer_arguments(self, call: ConvCall) -> dict[str, Any]:
        k_h, k_w, out_channels, _ = call.w.shape
        extra = list(as_transposed(call.geometry).output_padding) if self.variant == "cropping" else None
        return {
            "filters": out_channels, "kernel_size": (k_h, k_w), "output_padding": extra,
            "kernel_initializer": INITIALIZER,
        }  # fmt: skip

    def forward(self, call: ConvCall, device: str, precision: str) -> list[Statement]:
        statements = super().forward(call, device, precision)
        if self.variant != "cropping":
            return statements
        (top, bottom), (left, right) = call.geometry.pads
        cropping = invoke(
            "keras.layers.Cropping2D", cropping=((top, bottom), (left, right)), data_format="channels_last",
            dtype=call.dtype,
        )  # fmt: skip
        return [*statements, Assign("y", invoke(cropping, Name("y")), "explicit crops, the Keras way")]


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


class KerasGradient(DerivativeAdapter, DescribedAdapter):
    """The eager layer call's gradient of <y, dy>, by the backend's own autodiff: the path
    training takes (for JAX, Keras' stateless call, which is what its trainer differentiates)."""

    primary: _KerasLayer

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        layer, backend = self.primary, self.primary.backend
        wrt_input = self.with_respect_to == "input"
        setup = [*layer.built_layer(call), *layer.input_tensor(call), _tensor("dy_k", Name("dy"), call.dtype)]
        kernel = Attr(KERNEL, "value")
        wrt = Name("x_k") if wrt_input else kernel
        if backend == "tensorflow":
            taped = With(
                invoke("tf.GradientTape"),
                (Do(method("tape", "watch", Name("x_k"))), Assign("y", invoke("layer", Name("x_k")))),
                "tape",
            )
            body: list[Statement] = [
                taped,
                Assign("g", method("tape", "gradient", Name("y"), wrt, output_gradients=Name("dy_k"))),
            ]
            imports: tuple[Statement, ...] = (Import("tensorflow", "tf"),)
        elif backend == "jax":
            stateless = Lambda(
                ("x_k", "kernel"), Index(method("layer", "stateless_call", [Name("kernel")], [], Name("x_k")), 0)
            )
            body = [
                Assign("y, pullback", invoke("jax.vjp", stateless, Name("x_k"), kernel)),
                Assign("gx, gw", invoke("pullback", Name("dy_k"))),
                Assign("g", Name("gx" if wrt_input else "gw")),
            ]
            imports = (Import("jax"),)
        else:
            body = [
                Do(method("x_k", "requires_grad_")),
                Assign("y", invoke("layer", Name("x_k"))),
                Assign("(g,)", invoke("torch.autograd.grad", Name("y"), [wrt], grad_outputs=Name("dy_k"))),
            ]
            imports = (Import("torch"),)
        if not wrt_input and isinstance(layer, KerasDepthwiseConv2D):
            k_h, k_w, _, out_channels = call.w.shape
            body.append(Assign("g", invoke("keras.ops.reshape", Name("g"), (k_h, k_w, 1, out_channels)), "HWIO"))
        return Program(layer.placed([*setup, *body], device, precision, imports), result="g")

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        self.primary.refuse_what_keras_refuses(call)
        return DescribedAdapter.run(self, call, device, precision)


CONV2D_VARIANTS = ("", "compiled", "channels-first", "zero-padding")
MODEL_VARIANTS = ("", "compiled", "jit-compile")
DEPTHWISE_VARIANTS = ("", "compiled", "channels-first")
TRANSPOSE_VARIANTS = ("", "compiled", "channels-first", "cropping")
GRADIENTS = ("grad-input", "grad-kernel")


def in_child(inner: _KerasLayer | KerasGradient, devices: tuple[str, ...] | None = None) -> InChildProcess:
    """`inner` as a target: run in a process whose Keras was imported with its backend."""
    backend = inner.primary.backend if isinstance(inner, KerasGradient) else inner.backend
    return InChildProcess(inner, inner.variant, {BACKEND_VARIABLE: backend}, devices=devices or inner.devices)


def _backend_targets(backend: str) -> list[InChildProcess]:
    conv, depthwise, transpose = KerasConv2D(backend), KerasDepthwiseConv2D(backend), KerasConv2DTranspose(backend)
    layers: list[_KerasLayer] = [
        *(KerasConv2D(backend, variant) for variant in CONV2D_VARIANTS),
        *(KerasDepthwiseConv2D(backend, variant) for variant in DEPTHWISE_VARIANTS),
        *(KerasConv2DTranspose(backend, variant) for variant in TRANSPOSE_VARIANTS),
    ]
    if backend == "tensorflow":
        layers.append(KerasConv2D(backend, "jit-compile"))
    gradients = [KerasGradient(primary, quantity) for primary in (conv, depthwise, transpose) for quantity in GRADIENTS]
    adapters: list[_KerasLayer | KerasGradient] = [*layers, *gradients]
    return [in_child(adapter) for adapter in adapters]


ADAPTERS = tuple(target for backend in BACKENDS for target in _backend_targets(backend))
