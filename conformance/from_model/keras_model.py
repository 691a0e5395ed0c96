"""The convolutions of a Keras model file (`.keras`): its Conv1D/2D/3D, DepthwiseConv1D/2D,
SeparableConv1D/2D and Conv1D/2D/3DTranspose layers, nested models included, each with the input
shape it is called on.

Keras states kernels as (*spatial, I, O) already (ConvTranspose: (*spatial, C_out, C_in), the case
format's transposed kernel); a depthwise kernel (*spatial, C_in, multiplier) is the grouped kernel
(*spatial, 1, C_in * multiplier) with groups = C_in; a separable convolution is that depthwise
convolution followed by a 1x1 one, two cases. Keras' "same" is TensorFlow's SAME; Conv1D's "causal"
is the case format's CAUSAL (a WaveNet stack's layers).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from conformance.from_model import Convolution, Found, ModelError, Skipped
from conformance.semantics import CONV, CONV_TRANSPOSE, effective_kernel_size, geometry, per_axis

_READ = ("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
         "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")  # fmt: skip
_OTHER_CONVOLUTIONS = ("ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


def read(path: Path, input_shape: tuple[int, ...] | None) -> Found:
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path}: not a Keras model file (a .keras file is a zip archive; this one is not, or is truncated)"
        )
    import keras

    try:
        model = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:
        raise ModelError(f"{path}: Keras cannot load it ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    found = Found()
    batch = input_shape[0] if input_shape else 1
    for name, layer in _layers(model):
        kind = type(layer).__name__
        if kind in _OTHER_CONVOLUTIONS:
            found.skipped.append(Skipped(name, f"{kind} is a recurrent layer, not a convolution the suite states"))
            continue
        if kind not in _READ:
            continue
        shapes = _input_shapes(layer)
        if not shapes:
            found.skipped.append(Skipped(name, "its input shape is unknown (the layer is never called in the model)"))
        for call, shape in enumerate(shapes):
            label = name if len(shapes) == 1 else f"{name} (call {call + 1})"
            try:
                found.convolutions += _convolutions(layer, kind, label, shape, batch)
            except _Unsupported as exc:
                found.skipped.append(Skipped(label, str(exc)))
    return found


class _Unsupported(Exception):
    pass


def _layers(model: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for layer in getattr(model, "layers", []):
        name = f"{prefix}{layer.name}"
        if getattr(layer, "layers", None) and type(layer).__name__ not in _READ:  # a nested model
            yield from _layers(layer, f"{name}/")
        else:
            yield name, layer


def _input_shapes(layer: Any) -> list[tuple[Any, ...]]:
    """The input shape of each call of the layer (a shared layer is called more than once)."""
    nodes = getattr(layer, "_inbound_nodes", None)  # (Keras keeps each call's tensors there)
    if nodes:
        return [tuple(node.input_tensors[0].shape) for node in nodes if node.input_tensors]
    try:
        return [tuple(layer.input.shape)]
    except Exception:
        return []


def _channels_last(shape: tuple[Any, ...], rank: int, data_format: str, batch: int) -> tuple[int, ...]:
    if len(shape) != rank + 2:
        raise _Unsupported(f"input of rank {len(shape)}, not {rank + 2}")
    n, *rest = shape
    *spatial, channels = rest if data_format != "channels_first" else (*rest[1:], rest[0])
    if any(d is None for d in (*spatial, channels)):
        raise _Unsupported(f"dynamic spatial size {list(shape)}: save the model with a fixed input shape")
    return (int(n) if n is not None else batch, *(int(d) for d in spatial), int(channels))


def _padding(word: str, kind: str) -> str:
    if word == "causal" and kind == "Conv1D":
        return "CAUSAL"  # (k - 1) * rate before the time axis, nothing after
    if word not in ("same", "valid"):
        raise _Unsupported(f"padding {word!r}")
    return word.upper()


def _kernel(variable: Any) -> np.ndarray:
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)


def _convolutions(layer: Any, kind: str, name: str, shape: tuple[Any, ...], batch: int) -> list[Convolution]:
    config = layer.get_config()
    taps = tuple(int(k) for k in config["kernel_size"])
    rank = len(taps)
    shape_in = _channels_last(shape, rank, config.get("data_format") or "channels_last", batch)
    rate, stride = per_axis(config.get("dilation_rate", 1), rank), per_axis(config.get("strides", 1), rank)
    padding = _padding(config["padding"], kind)
    c_in = shape_in[-1]
    family = kind[: kind.index("Conv")]  # "Conv2D" -> "", "DepthwiseConv1D" -> "Depthwise"
    if not family and not kind.endswith("Transpose"):
        kernel = _kernel(layer.kernel)
        groups = int(config.get("groups", 1))
        return [Convolution.of(name, CONV, shape_in, tuple(kernel.shape), rate, stride, padding, groups, kernel=kernel)]
    if family in ("Depthwise", "Separable"):
        # (Keras 3 names a DepthwiseConv's kernel `kernel`, a SeparableConv's `depthwise_kernel`)
        depthwise = _kernel(layer.depthwise_kernel if family == "Separable" else layer.kernel)
        multiplier = depthwise.shape[-1]
        grouped = depthwise.reshape(*taps, 1, c_in * multiplier)  # output channel c * multiplier + m
        part = f"{name}/depthwise" if family == "Separable" else name
        convs = [
            Convolution.of(part, CONV, shape_in, tuple(grouped.shape), rate, stride, padding, c_in, kernel=grouped)
        ]
        if family == "Separable":
            pointwise = _kernel(layer.pointwise_kernel)
            depthwise_geometry = geometry(padding, shape_in[1:-1], taps, rate, stride)  # type: ignore[arg-type]  # ("SAME"/"VALID")
            if not depthwise_geometry.has_valid_output:
                raise _Unsupported("its depthwise part has no valid output, so the pointwise part has no input")
            pointwise_input = (shape_in[0], *depthwise_geometry.output_size, c_in * multiplier)
            ones = (1,) * rank
            convs.append(Convolution.of(f"{name}/pointwise", CONV, pointwise_input, tuple(pointwise.shape), ones,
                                        ones, "VALID", 1, kernel=pointwise))  # fmt: skip
        return convs
    kernel = _kernel(layer.kernel)  # (*spatial, C_out, C_in)
    extra = config.get("output_padding")
    if extra is None:
        return [
            Convolution.of(name, CONV_TRANSPOSE, shape_in, tuple(kernel.shape), rate, stride, padding, kernel=kernel)
        ]
    # With output_padding, Keras defines the output by its own rule (keras/src/backend/common/
    # backend_utils.py, the JAX and torch backends' conversion): written out here as crops.
    axes = [_crops(size, k, r, s_, padding, int(op)) for size, k, r, s_, op in
            zip(shape_in[1:-1], taps, rate, stride, per_axis(extra, rank), strict=True)]  # fmt: skip
    crops = tuple(crop for crop, _ in axes)
    added = tuple(pad for _, pad in axes)
    return [Convolution.of(name, CONV_TRANSPOSE, shape_in, tuple(kernel.shape), rate, stride, crops, 1, added,
                        kernel=kernel)]  # fmt: skip


def _crops(size: int, k: int, r: int, s: int, padding: str, output_padding: int) -> tuple[tuple[int, int], int]:
    """Keras' transposed output along one axis as (crop before, crop after) and output_padding.
    "valid": the full output plus output_padding. "same": a length of (i-1)s + k_eff % 2 +
    output_padding, JAX's left pad min(ceil(pad_len / 2), k_eff - 1) of pad_len = k_eff + k_eff % 2
    - 2 + output_padding, i.e. k_eff - 1 - left_pad cropped before."""
    k_eff = effective_kernel_size(k, r)
    if padding == "VALID":
        return (0, 0), output_padding
    pad_len = k_eff + k_eff % 2 - 2 + output_padding
    before = k_eff - 1 - min(pad_len // 2 + pad_len % 2, k_eff - 1)
    length = (size - 1) * s + k_eff % 2 + output_padding
    after = (size - 1) * s + k_eff - before - length
    return (before, max(after, 0)), max(-after, 0)
