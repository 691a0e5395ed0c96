"""The convolutions of an ONNX file: its Conv and ConvTranspose nodes, with input shapes from ONNX
shape inference (after fixing the graph input to `--input-shape`, given NHWC, where one is given).

ONNX tensors are NCHW and weights OIHW (ConvTranspose: C_in x C_out/group x kH x kW); pads are
(top, left, bottom, right). `auto_pad` SAME_UPPER is TensorFlow's SAME (the odd pixel after);
SAME_LOWER puts it before, so it is written as explicit pads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from conformance.from_model import Convolution, Found, ModelError, Skipped, pads_or_word
from conformance.semantics import CONV, CONV_TRANSPOSE, effective_kernel_size, same_pads

# Other ONNX operators with "Conv" in their name compute something the suite does not state.
_OTHER_CONVOLUTIONS = ("ConvInteger", "QLinearConv", "DeformConv", "NhwcConv", "FusedConv")


def read(path: Path, input_shape: tuple[int, ...] | None) -> Found:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except Exception as exc:  # protobuf's DecodeError and friends: a truncated or foreign file
        raise ModelError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    if input_shape is not None:
        _fix_input_shape(graph, input_shape, path)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise ModelError(f"{path}: ONNX shape inference failed ({type(exc).__name__}: {exc})") from None
    graph = model.graph
    shapes = {value.name: _dims(value) for value in [*graph.input, *graph.value_info, *graph.output]}
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    found = Found()
    for number, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}#{number}"
        if node.op_type in _OTHER_CONVOLUTIONS:
            found.skipped.append(Skipped(name, f"{node.op_type} is not a float convolution the suite states"))
            continue
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        try:
            found.convolutions.append(_convolution(node, name, shapes, initializers))
        except _Unsupported as exc:
            found.skipped.append(Skipped(name, str(exc)))
    return found


class _Unsupported(Exception):
    pass


def _dims(value: Any) -> list[int | str] | None:
    kind = value.type.tensor_type
    if not kind.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in kind.shape.dim]


def _fix_input_shape(graph: Any, nhwc: tuple[int, ...], path: Path) -> None:
    initialized = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initialized]
    four_d = [value for value in inputs if len(value.type.tensor_type.shape.dim) == 4]
    if len(four_d) != 1:
        raise ModelError(f"{path}: --input-shape needs exactly one 4-D graph input, found {len(four_d)}")
    n, h, w, c = nhwc
    for dim, size in zip(four_d[0].type.tensor_type.shape.dim, (n, c, h, w), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = size


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def _convolution(node: Any, name: str, shapes: dict[str, Any], initializers: dict[str, np.ndarray]) -> Convolution:
    attributes = _attributes(node)
    x_shape = shapes.get(node.input[0])
    w_shape = list(initializers[node.input[1]].shape) if node.input[1] in initializers else shapes.get(node.input[1])
    if x_shape is None or w_shape is None:
        raise _Unsupported("shape inference gave no shape for its input or weight")
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise _Unsupported(f"a {len(x_shape) - 2}-D convolution: only 2-D ones are cases")
    dynamic = [d for d in [*x_shape, *w_shape] if not isinstance(d, int) or d <= 0]
    if dynamic:
        raise _Unsupported(f"dynamic shape {x_shape} (dimension {dynamic[0]!r}): pass --input-shape N,H,W,C")
    n, c_in, h, w = (int(d) for d in x_shape)
    groups = int(attributes.get("group", 1))
    k_h, k_w = int(w_shape[2]), int(w_shape[3])
    rate = tuple(int(d) for d in attributes.get("dilations", (1, 1)))
    stride = tuple(int(s) for s in attributes.get("strides", (1, 1)))
    top, left, bottom, right = (int(p) for p in attributes.get("pads", (0, 0, 0, 0)))
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    weight = initializers.get(node.input[1])
    kernel = None if weight is None else np.ascontiguousarray(weight.transpose(2, 3, 1, 0))  # -> HWIO
    common: dict[str, Any] = {
        "layer": name,
        "input_shape": (n, h, w, c_in),
        "rate": rate,
        "stride": stride,
        "groups": groups,
    }
    if node.op_type == "Conv":
        if auto_pad in ("SAME_UPPER", "VALID"):
            padding: Any = "SAME" if auto_pad == "SAME_UPPER" else "VALID"
        elif auto_pad == "SAME_LOWER":
            (up, down), (west, east) = (
                same_pads(size, k, r_, s) for size, k, r_, s in zip((h, w), (k_h, k_w), rate, stride, strict=True)
            )
            padding = pads_or_word((down, up, east, west))  # SAME's pads with the odd pixel before
        else:
            padding = pads_or_word((top, bottom, left, right))
        return Convolution.of(op=CONV, kernel_shape=(k_h, k_w, int(w_shape[1]), int(w_shape[0])), padding=padding,
                           kernel=kernel, **common)  # fmt: skip
    if "output_shape" in attributes:
        raise _Unsupported("ConvTranspose states output_shape: write its pads instead")
    extra = tuple(int(p) for p in attributes.get("output_padding", (0, 0)))
    if auto_pad != "NOTSET":
        # The ONNX specification's own rule: output i*s, total padding split by auto_pad.
        sides: list[tuple[int, int]] = []
        for size, k, r_, s, op in zip((h, w), (k_h, k_w), rate, stride, extra, strict=True):
            total = s * (size - 1) + op + effective_kernel_size(k, r_) - size * s if auto_pad != "VALID" else 0
            if total < 0:
                raise _Unsupported(f"auto_pad {auto_pad} with a kernel shorter than the stride (negative padding)")
            half = total // 2
            sides.append((half, total - half) if auto_pad == "SAME_UPPER" else (total - half, half))
        (top, bottom), (left, right) = sides
    # Always explicit crops: "VALID" for a transposed convolution is TensorFlow's rule, which adds
    # output_padding where the kernel is shorter than the stride; zero crops do not.
    crops = ((top, bottom), (left, right))
    return Convolution.of(op=CONV_TRANSPOSE, kernel_shape=(k_h, k_w, int(w_shape[1]), int(w_shape[0])), padding=crops,
                       output_padding=extra, kernel=kernel, **common)  # fmt: skip
