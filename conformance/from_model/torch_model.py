"""The convolutions of a torch module, `package.module:factory`: the factory is called with no
arguments, and the module runs once (eval mode, no grad) on zeros of `--input-shape` (channels last,
N,W,C / N,H,W,C / N,D,H,W,C; the module gets channels first), a hook on every nn.Conv1d/2d/3d and
nn.ConvTranspose1d/2d/3d recording the input each call receives. Convolutions called as functions
(F.conv1d inside forward) are not modules and are not seen. A causal 1-D layer (WaveNet's) is a
Conv1d after a left pad (nn.ConstantPad1d, F.pad): the convolution sees the padded input, VALID.

torch weights are (O, I, *spatial) (ConvTranspose: C_in x C_out/groups x *spatial); `padding` is
symmetric per axis (for ConvTranspose, the crops), 'same' is SAME at stride 1 (torch's odd pixel also
goes after).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from conformance import layouts
from conformance.from_model import Convolution, Found, ModelError, Skipped, channels_first, pads_or_word
from conformance.semantics import CONV, CONV_TRANSPOSE


def read(spec: str, input_shape: tuple[int, ...] | None) -> Found:
    import torch
    from torch import nn

    module_name, _, factory_name = spec.partition(":")
    if input_shape is None:
        raise ModelError(f"{spec}: a torch module needs --input-shape N,...,C (channels last) to run on")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ModelError(f"{spec}: cannot import {module_name} ({type(exc).__name__}: {exc})") from None
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise ModelError(f"{spec}: {module_name} has no {factory_name!r}")
    model = factory if isinstance(factory, nn.Module) else factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec}: {factory_name}() returned {type(model).__name__}, not a torch.nn.Module")
    found = Found()
    names = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
    called: dict[str, int] = {}

    def hook(layer: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = names[id(layer)]
        called[name] = called.get(name, 0) + 1
        label = name if called[name] == 1 else f"{name} (call {called[name]})"
        try:
            found.convolutions.append(_convolution(layer, label, args, kwargs))
        except _Unsupported as exc:
            found.skipped.append(Skipped(label, str(exc)))

    read_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    handles = []
    for _, layer in model.named_modules():
        if type(layer) in read_types:
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    shape = list(channels_first(input_shape))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(*shape))
    except Exception as exc:
        raise ModelError(
            f"{spec}: the module fails on zeros of shape {shape} (channels first): {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    for name, layer in model.named_modules():
        if type(layer) in read_types and name not in called:
            found.skipped.append(Skipped(name, "not called by forward on this input"))
    return found


class _Unsupported(Exception):
    pass


def _convolution(layer: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Convolution:
    from torch import nn

    x = args[0]
    rank = len(layer.kernel_size)
    if x.dim() != rank + 2:
        raise _Unsupported(f"input of rank {x.dim()} (unbatched input is not a case)")
    n, c_in, *spatial = (int(d) for d in x.shape)
    if layer.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode {layer.padding_mode!r}: the suite states zero padding")
    weight = layer.weight.detach().cpu().numpy()
    kernel = np.ascontiguousarray(weight.transpose(layouts.spatial_first(rank)))  # (transposed: *k, C_out/g, C_in)
    common: dict[str, Any] = {
        "layer": name, "input_shape": (n, *spatial, c_in), "kernel_shape": kernel.shape, "rate": layer.dilation,
        "stride": layer.stride, "groups": layer.groups, "kernel": kernel,
    }  # fmt: skip
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if isinstance(layer.padding, str):
            padding: Any = layer.padding.upper()  # 'same' (stride 1 only, odd pixel after) or 'valid'
        else:
            padding = pads_or_word([side for pad in layer.padding for side in (pad, pad)])
        return Convolution.of(op=CONV, padding=padding, **common)
    if len(args) > 1 or kwargs.get("output_size") is not None:
        raise _Unsupported("called with output_size: its output_padding is chosen per call")
    crops = tuple((pad, pad) for pad in layer.padding)
    return Convolution.of(op=CONV_TRANSPOSE, padding=crops, output_padding=layer.output_padding, **common)
