"""ONNX Runtime: a one-node ONNX model (`Conv`, NCHW input, OIHW kernel, `group`) built with the
`onnx` package's helper API and run by `onnxruntime.InferenceSession`, as a deployed model runs.

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

from conformance.adapters import padding
from conformance.adapters.base import CallParams, ConvCall, DescribedAdapter, DeviceComparison, Unavailable
from conformance.adapters.modes import numpy_output, physical_device
from conformance.adapters.program import (
    Assign,
    Dict,
    Do,
    Expr,
    Import,
    Index,
    Name,
    Program,
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


class OnnxRuntimeConv(DescribedAdapter):
    framework = ONNXRUNTIME
    op = "Conv"

    def __init__(self, variant: str = "") -> None:
        self.variant = variant

    def unsupported_reason(self, call_params: CallParams) -> str | None:
        if call_params.dtype not in ELEMENT_TYPES:
            return f"ONNX {self.op} (opset {OPSET}) takes float16, float and double tensors, not {call_params.dtype}"
        if self.variant == "auto-pad" and call_params.padding != "SAME":
            return "auto_pad states SAME only; other paddings are explicit pads already"
        return None

    def check_available(self, device: str) -> None:
        ort = _ort()
        if PROVIDERS[physical_device(device)] not in ort.get_available_providers():
            raise Unavailable(
                f"onnxruntime {ort.__version__} has no {PROVIDERS[physical_device(device)]} "
                f"(it has {', '.join(ort.get_available_providers())})"
            )

    def attributes(self, call: ConvCall) -> dict[str, Any]:
        k_h, k_w = call.w.shape[:2]
        pads: dict[str, Any] = {"pads": padding.begins_then_ends(call.geometry.pads)}
        if self.variant == "auto-pad":
            pads = {"auto_pad": "SAME_UPPER"}
        return {
            "kernel_shape": [k_h, k_w],
            "strides": list(call.stride),
            "dilations": list(call.rate),
            "group": call.groups,
            **pads,
        }

    def session(self, model: Expr, device: str, precision: str) -> list[Statement]:
        """`session`: an InferenceSession of the serialised `model` on the device's provider, with
        the variant's graph optimisation level."""
        provider: Any = PROVIDERS[physical_device(device)]
        if physical_device(device) == "gpu" and precision == "strict":
            provider = (provider, {"use_tf32": "0"})
        options: list[Statement] = [Assign("options", invoke("ort.SessionOptions"))]
        if self.variant in OPTIMISATION_LEVELS:
            level = Name(f"ort.GraphOptimizationLevel.{OPTIMISATION_LEVELS[self.variant]}")
            options.append(SetAttr("options.graph_optimization_level", level))
        options.append(SetAttr("options.log_severity_level", 4))  # fatal only: errors reach the record, not stderr
        session = invoke("ort.InferenceSession", model, Name("options"), providers=[provider])
        return [*options, Assign("session", session)]

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        element = Name(f"onnx.TensorProto.{ELEMENT_TYPES[call.dtype]}")
        n, h, w, c_in = call.x.shape
        k_h, k_w, c_per_group, c_out = call.w.shape

        def value_info(name: str, shape: list[int] | None) -> Expr:
            return invoke("oh.make_tensor_value_info", name, element, shape)

        node = invoke("oh.make_node", self.op, ["x", "w"], ["y"], **self.attributes(call))
        # (ConvTranspose's W is (C_in, C_out / group, k_h, k_w): the same permutation of the case's kernel.)
        inputs = [value_info("x", [n, c_in, h, w]), value_info("w", [c_out, c_per_group, k_h, k_w])]
        graph = invoke("oh.make_graph", [Name("conv")], "conv", inputs, [value_info("y", None)])
        opset = [invoke("oh.make_opsetid", "", OPSET)]
        numpy_type = Name(f"np.{call.dtype}")
        feeds = {
            "x": method(method("x", "transpose", 0, 3, 1, 2), "astype", numpy_type),
            "w": method(method("w", "transpose", 3, 2, 0, 1), "astype", numpy_type),
        }
        outputs = Index(method("session", "run", None, Dict(tuple(feeds.items()))), 0)
        return Program(
            (
                Import("numpy", "np"),
                Import("onnx"),
                Import("onnx.helper", "oh"),
                Import("onnxruntime", "ort"),
                Assign("conv", node),
                Assign("graph", graph),
                Assign("model", invoke("oh.make_model", Name("graph"), opset_imports=opset, ir_version=IR_VERSION)),
                *self.session(method("model", "SerializeToString"), device, precision),
                Assign("y", method(outputs, "transpose", 0, 2, 3, 1), "NCHW -> NHWC"),
            )
        )

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


class OnnxRuntimeTorchExport(OnnxRuntimeConv):
    """The deployment path: a `torch.nn.Conv2d` (asymmetric pads as a `ZeroPad2d` before it, the
    porting idiom) exported by `torch.onnx.export` and run by ONNX Runtime. The exporter decides
    the node's pads: torch's `padding="same"` becomes `auto_pad="SAME_UPPER"`. It is TorchScript's
    exporter (`dynamo=False`): the torch.export-based one needs onnxscript and takes about 1.5 s a
    geometry here, against 20 ms."""

    def __init__(self) -> None:
        super().__init__("torch-export")

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

    def describe(self, call: ConvCall, device: str, precision: str) -> Program:
        n, h, w, c_in = call.x.shape
        k_h, k_w, _, c_out = call.w.shape
        argument, explicit = padding.torch_arguments(call.padding, call.geometry.pads)
        dtype = Name(f"torch.{call.dtype}")
        conv = invoke(
            "torch.nn.Conv2d", c_in, c_out, (k_h, k_w), stride=call.stride, padding=argument, dilation=call.rate,
            groups=call.groups, bias=False, dtype=dtype,
        )  # fmt: skip
        module: Expr = Name("conv")
        if explicit:
            module = invoke("torch.nn.Sequential", invoke("torch.nn.ZeroPad2d", explicit), Name("conv"))
        weight = method(invoke("torch.tensor", Name("w"), dtype=dtype), "permute", 3, 2, 0, 1)
        example = (invoke("torch.zeros", n, c_in, h, w, dtype=dtype),)
        export = invoke(
            "torch.onnx.export",
            Name("model"),
            example,
            Name("exported"),
            input_names=["x"],
            dynamo=False,
            opset_version=EXPORT_OPSET,
        )
        run = Index(method("session", "run", None, Dict((("x", Name("x_nchw")),))), 0)
        return Program(
            (
                Import("io"),
                Import("numpy", "np"),
                Import("torch"),
                Import("onnxruntime", "ort"),
                Assign("conv", conv),
                Assign("model", module),
                With(invoke("torch.no_grad"), (Do(method("conv.weight", "copy_", weight), "OIHW"),)),
                Assign("exported", invoke("io.BytesIO")),
                Do(export),
                *self.session(method("exported", "getvalue"), device, precision),
                Assign("x_nchw", method(method("x", "transpose", 0, 3, 1, 2), "astype", Name(f"np.{call.dtype}"))),
                Assign("y", method(run, "transpose", 0, 2, 3, 1), "NCHW -> NHWC"),
            )
        )


class OnnxRuntimeConvTranspose(OnnxRuntimeConv):
    """`ConvTranspose`: pads are crops, `output_padding` adds at the end; `@auto-pad` states SAME as
    auto_pad="SAME_UPPER" alone, which by the spec means output = input * stride with the odd crop
    pixel at the end (TF's SAME), with no `output_shape` to lean on."""

    op = "ConvTranspose"
    operation = CONV_TRANSPOSE

    def attributes(self, call: ConvCall) -> dict[str, Any]:
        attributes = super().attributes(call)
        if self.variant == "auto-pad":
            return attributes
        return {**attributes, "output_padding": list(as_transposed(call.geometry).output_padding)}


PRIMARY = OnnxRuntimeConv()
TRANSPOSED = OnnxRuntimeConvTranspose()

ADAPTERS = (
    PRIMARY,
    OnnxRuntimeConv("auto-pad"),
    *(OnnxRuntimeConv(variant) for variant in OPTIMISATION_LEVELS),
    OnnxRuntimeTorchExport(),
    DeviceComparison(PRIMARY),
    TRANSPOSED,
    OnnxRuntimeConvTranspose("auto-pad"),
    DeviceComparison(TRANSPOSED),
)
