"""ONNX Runtime: a one-node ONNX model (`Conv`, channels-first input, (O, I, *spatial) kernel, `group`)
built with the `onnx` package's helper API and run by `onnxruntime.InferenceSession`, as a deployed
model runs. ONNX's Conv and ConvTranspose take any number of spatial axes: one target serves 1-D,
2-D and 3-D cases.

ONNX spells pads `[top, left, bottom, right]` (all begins, then all ends). The primary target
writes every case's pads out that way (SAME included), because that is what ONNX Runtime executes
for any auto_pad; `@auto-pad` gives SAME cases as `auto_pad="SAME_UPPER"` instead (what exporters
emit for TensorFlow's SAME: the odd pixel after), and the two graph-optimisation modes run the
same model with every optimisation off and with all of them on (fusions, layout changes).

ONNX's Conv (opsets 11 to 21) takes float16, float and double tensors; bfloat16 cannot be
stated. GPU targets use the CUDA execution provider where one is installed; strict mode turns its
TF32 off (`use_tf32 = 0`).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np

from conformance import layouts
from conformance.adapters import padding
from conformance.adapters.base import CallParams, CallWrapper, ConvCall, DeviceComparison, FrameworkCall, Unavailable
from conformance.adapters.modes import numpy_output, physical_device
from conformance.adapters.program import (
    Assign,
    Dict,
    Do,
    Expr,
    Import,
    Index,
    Name,
    Once,
    SetAttr,
    Statement,
    With,
    invoke,
    method,
)
from conformance.frameworks import ONNXRUNTIME
from conformance.semantics import CONV_TRANSPOSE, as_transposed

OPSET = 21  # the newest opset whose Conv this onnxruntime release implements on every provider here
EXPORT_OPSET = 18  # an opset every torch.onnx.export (TorchScript) release here writes
IR_VERSION = 10  # of the model file; newer onnx packages write newer ones than some runtimes read
ELEMENT_TYPES = {"float32": "FLOAT", "float64": "DOUBLE", "float16": "FLOAT16"}
PROVIDERS = {"cpu": "CPUExecutionProvider", "gpu": "CUDAExecutionProvider"}
OPTIMISATION_LEVELS = {"optimizations-off": "ORT_DISABLE_ALL", "optimizations-all": "ORT_ENABLE_ALL"}


@cache
def _ort() -> Any:
    try:
        import onnx  # noqa: F401  (the model builder: without it there is nothing to run)
        import onnxruntime
    except ImportError as exc:
        raise Unavailable(f"ONNX Runtime or onnx is not installed ({exc})") from None
    return onnxruntime


class OnnxRuntimeConv(FrameworkCall):
    """A one-node `Conv` model: `tensors` builds it and its session and lays the case out as its
    inputs (NCHW, OIHW), `invocation` runs the session."""

    framework = ONNXRUNTIME
    op = "Conv"
    ranks = (1, 2, 3)

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if call_params.dtype not in ELEMENT_TYPES:
            return f"ONNX {self.op} (opset {OPSET}) takes float16, float and double tensors, not {call_params.dtype}"
        return None

    def check_available(self, device: str) -> None:
        ort = _ort()
        if PROVIDERS[physical_device(device)] not in ort.get_available_providers():
            raise Unavailable(
                f"onnxruntime {ort.__version__} has no {PROVIDERS[physical_device(device)]} "
                f"(it has {', '.join(ort.get_available_providers())})"
            )

    def attributes(self, call: ConvCall) -> dict[str, Any]:
        return {
            "kernel_shape": list(call.w.shape[: len(call.rate)]),
            "strides": list(call.stride),
            "dilations": list(call.rate),
            "group": call.groups,
            "pads": padding.begins_then_ends(call.geometry.pads),
        }

    def session(self, model: Expr, device: str, precision: str, optimisation: str | None = None) -> list[Statement]:
        """`session`: an InferenceSession of the serialised `model` on the device's provider, with the
        graph optimisation level `optimisation` (ONNX Runtime's default where None)."""
        provider: Any = PROVIDERS[physical_device(device)]
        if physical_device(device) == "gpu" and precision == "strict":
            provider = (provider, {"use_tf32": "0"})
        options: list[Statement] = [Assign("options", invoke("ort.SessionOptions"))]
        if optimisation is not None:
            level = Name(f"ort.GraphOptimizationLevel.{optimisation}")
            options.append(SetAttr("options.graph_optimization_level", level))
        options.append(SetAttr("options.log_severity_level", 4))  # fatal only: errors reach the record, not stderr
        # A session is kept for its geometry's next checks (`Once` below). By default its threads spin
        # between runs, and several kept sessions burn the cores the other worker's checks need; and its
        # memory arena keeps its largest run's buffers (about 150 MB each for the documents' 4 x 200 x 200
        # x 32 outputs), which took workers over their memory budget. Neither changes what a run computes.
        options.append(Do(method("options", "add_session_config_entry", "session.intra_op.allow_spinning", "0")))
        options.append(SetAttr("options.enable_cpu_mem_arena", False))
        session = invoke("ort.InferenceSession", model, Name("options"), providers=[provider])
        return [*options, Assign("session", session)]

    def prelude(self, device: str, precision: str) -> list[Statement]:
        return [Import("numpy", "np"), Import("onnx"), Import("onnx.helper", "oh"), Import("onnxruntime", "ort")]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        return self.model_and_feeds(call, kernel, device, precision, self.attributes(call))

    def model_and_feeds(
        self,
        call: ConvCall,
        kernel: Expr,
        device: str,
        precision: str,
        attributes: dict[str, Any],
        optimisation: str | None = None,
    ) -> list[Statement]:
        """The model of one node with these attributes, its session, and the feeds `x_t` and `w_t`."""
        rank = len(call.rate)
        element = Name(f"onnx.TensorProto.{ELEMENT_TYPES[call.dtype]}")
        n, *spatial, c_in = call.x.shape
        *taps, c_per_group, c_out = call.w.shape

        def value_info(name: str, shape: list[int] | None) -> Expr:
            return invoke("oh.make_tensor_value_info", name, element, shape)

        node = invoke("oh.make_node", self.op, ["x", "w"], ["y"], **attributes)
        # (ConvTranspose's W is (C_in, C_out / group, k_h, k_w): the same permutation of the case's kernel.)
        inputs = [value_info("x", [n, c_in, *spatial]), value_info("w", [c_out, c_per_group, *taps])]
        graph = invoke("oh.make_graph", [Name("conv")], "conv", inputs, [value_info("y", None)])
        opset = [invoke("oh.make_opsetid", "", OPSET)]
        numpy_type = Name(f"np.{call.dtype}")
        model = invoke("oh.make_model", Name("graph"), opset_imports=opset, ir_version=IR_VERSION)
        built = (
            Assign("conv", node),
            Assign("graph", graph),
            Assign("model", model),
            *self.session(method("model", "SerializeToString"), device, precision, optimisation),
        )
        return [
            # The model holds no data (x and w are its inputs): one session per geometry and setting,
            # as the large tier intends (compiled once, checked on fresh data), rather than one per check.
            Once(built, context=(device, precision)),
            Assign(
                "x_t", method(method("x", "transpose", *layouts.channels_first(rank)), "astype", numpy_type), "NCHW"
            ),
            Assign(
                "w_t", method(method(kernel, "transpose", *layouts.out_in_first(rank)), "astype", numpy_type), "OIHW"
            ),
        ]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        feeds = Dict((("x", Name("x_t")), ("w", Name("w_t"))))
        return Index(method("session", "run", None, feeds), 0)

    def read_back(self, call: ConvCall, result: Expr) -> Expr:
        return method(result, "transpose", *layouts.channels_last(len(call.rate)))

    def to_numpy(self, value: Any) -> np.ndarray:
        return numpy_output(value, value.dtype.name)

    def environment(self) -> dict[str, Any]:
        ort = _ort()
        import onnx

        return {
            "version": ort.__version__,
            "onnx": onnx.__version__,
            "opset": OPSET,
            "providers": ort.get_available_providers(),
            "devices": ["cpu", *(["gpu"] if PROVIDERS["gpu"] in ort.get_available_providers() else [])],
        }


class AutoPad(CallWrapper):
    """SAME stated as `auto_pad="SAME_UPPER"` (what exporters emit for TensorFlow's SAME: the odd pixel
    after) instead of the pads written out; for ConvTranspose, auto_pad alone, which by the spec means
    output = input * stride with the odd crop pixel at the end, with no `output_shape` to lean on."""

    inner: OnnxRuntimeConv

    def __init__(self, inner: OnnxRuntimeConv) -> None:
        super().__init__(inner, "auto-pad")

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if (reason := self.inner.unsupported_reason(call_params)) is not None:
            return reason
        if call_params.padding != "SAME":
            return "auto_pad states SAME only; other paddings are explicit pads already"
        return None

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        attributes = {**self.inner.attributes(call), "auto_pad": "SAME_UPPER"}
        for stated in ("pads", "output_padding"):
            attributes.pop(stated, None)
        return self.inner.model_and_feeds(call, kernel, device, precision, attributes)


class Optimisations(CallWrapper):
    """The same model with every graph optimisation off, or all of them on (fusions, layout changes)."""

    inner: OnnxRuntimeConv

    def __init__(self, inner: OnnxRuntimeConv, variant: str) -> None:
        super().__init__(inner, variant)
        self.level = OPTIMISATION_LEVELS[variant]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        attributes = self.inner.attributes(call)
        return self.inner.model_and_feeds(call, kernel, device, precision, attributes, self.level)


class OnnxRuntimeTorchExport(OnnxRuntimeConv):
    """The deployment path: a `torch.nn.Conv1d`, `Conv2d` or `Conv3d` (asymmetric pads as a `ZeroPad1d`,
    `ZeroPad2d` or `ZeroPad3d` before it, the porting idiom) exported by `torch.onnx.export` and run by
    ONNX Runtime. The exporter decides the node's pads: torch's `padding="same"` becomes
    `auto_pad="SAME_UPPER"`. It is TorchScript's exporter (`dynamo=False`): the torch.export-based one
    needs onnxscript and takes about 1.5 s a geometry here, against 20 ms."""

    variant = "torch-export"

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        return padding.torch_same_refusal(call_params.padding, call_params.stride) or super().unsupported_reason(
            call_params
        )

    def check_available(self, device: str) -> None:
        super().check_available(device)
        try:
            import torch  # noqa: F401  (the exporter)
        except ImportError as exc:
            raise Unavailable(f"torch is not installed: nothing to export ({exc})") from None

    def prelude(self, device: str, precision: str) -> list[Statement]:
        return [Import("io"), Import("numpy", "np"), Import("torch"), Import("onnxruntime", "ort")]

    def tensors(self, call: ConvCall, kernel: Expr, device: str, precision: str) -> list[Statement]:
        rank = len(call.rate)
        n, *spatial, c_in = call.x.shape
        *taps, _, c_out = call.w.shape
        argument, explicit = padding.torch_arguments(call.padding, call.geometry.pads)
        dtype = Name(f"torch.{call.dtype}")
        conv = invoke(
            f"torch.nn.Conv{rank}d", c_in, c_out, tuple(taps), stride=call.stride, padding=argument,
            dilation=call.rate, groups=call.groups, bias=False, dtype=dtype,
        )  # fmt: skip
        module: Expr = Name("conv")
        if explicit:
            module = invoke("torch.nn.Sequential", invoke(f"torch.nn.ZeroPad{rank}d", explicit), Name("conv"))
        weight = method(invoke("torch.tensor", kernel, dtype=dtype), "permute", *layouts.out_in_first(rank))
        example = (invoke("torch.zeros", n, c_in, *spatial, dtype=dtype),)
        export = invoke(
            "torch.onnx.export",
            Name("model"),
            example,
            Name("exported"),
            input_names=["x"],
            dynamo=False,
            opset_version=EXPORT_OPSET,
        )
        return [
            Assign("conv", conv),
            Assign("model", module),
            With(invoke("torch.no_grad"), (Do(method("conv.weight", "copy_", weight), "OIHW"),)),
            Assign("exported", invoke("io.BytesIO")),
            Do(export),
            *self.session(method("exported", "getvalue"), device, precision),
            Assign(
                "x_t",
                method(method("x", "transpose", *layouts.channels_first(rank)), "astype", Name(f"np.{call.dtype}")),
            ),
        ]

    def invocation(self, call: ConvCall, precision: str) -> Expr:
        return Index(method("session", "run", None, Dict((("x", Name("x_t")),))), 0)


class OnnxRuntimeConvTranspose(OnnxRuntimeConv):
    """`ConvTranspose`: pads are crops, `output_padding` adds at the end."""

    op = "ConvTranspose"
    operation = CONV_TRANSPOSE

    def attributes(self, call: ConvCall) -> dict[str, Any]:
        return {**super().attributes(call), "output_padding": list(as_transposed(call.geometry).output_padding)}


PRIMARY = OnnxRuntimeConv()
TRANSPOSED = OnnxRuntimeConvTranspose()

ADAPTERS = (
    PRIMARY,
    AutoPad(PRIMARY),
    *(Optimisations(PRIMARY, variant) for variant in OPTIMISATION_LEVELS),
    OnnxRuntimeTorchExport(),
    DeviceComparison(PRIMARY),
    TRANSPOSED,
    AutoPad(TRANSPOSED),
    DeviceComparison(TRANSPOSED),
)
