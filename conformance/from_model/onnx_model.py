"""The convolutions of an ONNX file: its Conv and ConvTranspose nodes, with input shapes from ONNX
shape inference (after fixing the graph input to `--input-shape`, given channels last, where one is
given). 1-D, 2-D and 3-D nodes alike.

ONNX tensors are channels first and weights (O, I, *spatial) (ConvTranspose: C_in x C_out/group x
*spatial); pads are every begin, then every end ((top, left, bottom, right) in 2-D). `auto_pad`
SAME_UPPER is TensorFlow's SAME (the odd pixel after); SAME_LOWER puts it before, so it is written as
explicit pads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from conformance import layouts
from conformance.from_model import (
    Convolution,
    Found,
    ModelError,
    Skipped,
    channels_first,
    pads_or_word,
)
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


def _fix_input_shape(graph: Any, channels_last: tuple[int, ...], path: Path) -> None:
    initialized = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initialized]
    rank = len(channels_last)
    matching = [value for value in inputs if len(value.type.tensor_type.shape.dim) == rank]
    if len(matching) != 1:
        raise ModelError(f"{path}: --input-shape needs exactly one {rank}-D graph input, found {len(matching)}")
    for dim, size in zip(matching[0].type.tensor_type.shape.dim, channels_first(channels_last), strict=True):
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
    if not 3 <= len(x_shape) <= 5 or len(w_shape) != len(x_shape):
        raise _Unsupported(f"a {len(x_shape) - 2}-D convolution: the suite states 1-D, 2-D and 3-D ones")
    dynamic = [d for d in [*x_shape, *w_shape] if not isinstance(d, int) or d <= 0]
    if dynamic:
        raise _Unsupported(f"dynamic shape {x_shape} (dimension {dynamic[0]!r}): pass --input-shape N,...,C")
    n, c_in, *spatial = (int(d) for d in x_shape)
    rank = len(spatial)
    groups = int(attributes.get("group", 1))
    taps = tuple(int(k) for k in w_shape[2:])
    rate = tuple(int(d) for d in attributes.get("dilations", (1,) * rank))
    stride = tuple(int(s) for s in attributes.get("strides", (1,) * rank))
    stated = [int(p) for p in attributes.get("pads", (0,) * (2 * rank))]
    pads = list(zip(stated[:rank], stated[rank:], strict=True))  # ONNX: every begin, then every end
    auto_pad = attributes.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    weight = initializers.get(node.input[1])
    kernel = None if weight is None else np.ascontiguousarray(weight.transpose(layouts.spatial_first(rank)))
    kernel_shape = (*taps, int(w_shape[1]), int(w_shape[0]))
    common: dict[str, Any] = {
        "layer": name,
        "input_shape": (n, *spatial, c_in),
        "rate": rate,
        "stride": stride,
        "groups": groups,
    }
    if node.op_type == "Conv":
        if auto_pad in ("SAME_UPPER", "VALID"):
            padding: Any = "SAME" if auto_pad == "SAME_UPPER" else "VALID"
        elif auto_pad == "SAME_LOWER":  # SAME's pads with the odd pixel before
            axes = zip(spatial, taps, rate, stride, strict=True)
            lower = [same_pads(size, k, r_, s)[::-1] for size, k, r_, s in axes]
            padding = pads_or_word([side for pair in lower for side in pair])
        else:
            padding = pads_or_word([side for pair in pads for side in pair])
        return Convolution.of(op=CONV, kernel_shape=kernel_shape, padding=padding, kernel=kernel, **common)
    if "output_shape" in attributes:
        raise _Unsupported("ConvTranspose states output_shape: write its pads instead")
    extra = tuple(int(p) for p in attributes.get("output_padding", (0,) * rank))
    if auto_pad != "NOTSET":
        # The ONNX specification's own rule: output i*s, total padding split by auto_pad.
        pads = []
        for size, k, r_, s, op in zip(spatial, taps, rate, stride, extra, strict=True):
            total = s * (size - 1) + op + effective_kernel_size(k, r_) - size * s if auto_pad != "VALID" else 0
            if total < 0:
                raise _Unsupported(f"auto_pad {auto_pad} with a kernel shorter than the stride (negative padding)")
            half = total // 2
            pads.append((half, total - half) if auto_pad == "SAME_UPPER" else (total - half, half))
    # Always explicit crops: "VALID" for a transposed convolution is TensorFlow's rule, which adds
    # output_padding where the kernel is shorter than the stride; zero crops do not.
    return Convolution.of(op=CONV_TRANSPOSE, kernel_shape=kernel_shape, padding=tuple(pads), output_padding=extra,
                          kernel=kernel, **common)  # fmt: skip
