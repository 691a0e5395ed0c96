"""The convolutions of a torch module, `package.module:factory`: the factory is called with no
arguments, and the module runs once (eval mode, no grad) on zeros of `--input-shape` (NHWC; the
module gets NCHW), a hook on every nn.Conv2d and nn.ConvTranspose2d recording the input each call
receives. Convolutions called as functions (F.conv2d inside forward) are not modules and are not seen.

torch weights are OIHW (ConvTranspose2d: C_in x C_out/groups x kH x kW); `padding` is symmetric per
axis (for ConvTranspose2d, the crops), 'same' is SAME at stride 1 (torch's odd pixel also goes after).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from conformance.from_model import Convolution, Found, ModelError, Skipped, pads_or_word
from conformance.semantics import CONV, CONV_TRANSPOSE


def read(spec: str, input_shape: tuple[int, ...] | None) -> Found:
    import torch
    from torch import nn

    module_name, _, factory_name = spec.partition(":")
    if input_shape is None:
        raise ModelError(f"{spec}: a torch module needs --input-shape N,H,W,C to run on")
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

    handles = []
    for _, layer in model.named_modules():
        if type(layer) in (nn.Conv2d, nn.ConvTranspose2d):
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    n, h, w, c = input_shape
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(n, c, h, w))
    except Exception as exc:
        raise ModelError(
            f"{spec}: the module fails on zeros of shape {[n, c, h, w]} (NCHW): {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    for name, layer in model.named_modules():
        kind = type(layer).__name__
        if kind in ("Conv1d", "Conv3d", "ConvTranspose1d", "ConvTranspose3d"):
            found.skipped.append(Skipped(name, f"{kind} is not a 2-D convolution"))
        elif type(layer) in (nn.Conv2d, nn.ConvTranspose2d) and name not in called:
            found.skipped.append(Skipped(name, "not called by forward on this input"))
    return found


class _Unsupported(Exception):
    pass


def _convolution(layer: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Convolution:
    from torch import nn

    x = args[0]
    if x.dim() != 4:
        raise _Unsupported(f"input of rank {x.dim()} (unbatched input is not a case)")
    n, c_in, h, w = (int(d) for d in x.shape)
    if layer.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode {layer.padding_mode!r}: the suite states zero padding")
    weight = layer.weight.detach().cpu().numpy()
    kernel = np.ascontiguousarray(weight.transpose(2, 3, 1, 0))  # -> HWIO (transposed: k_h, k_w, C_out/g, C_in)
    common: dict[str, Any] = {
        "layer": name, "input_shape": (n, h, w, c_in), "kernel_shape": kernel.shape, "rate": layer.dilation,
        "stride": layer.stride, "groups": layer.groups, "kernel": kernel,
    }  # fmt: skip
    if isinstance(layer, nn.Conv2d):
        if isinstance(layer.padding, str):
            padding: Any = layer.padding.upper()  # 'same' (stride 1 only, odd pixel after) or 'valid'
        else:
            (p_h, p_w) = layer.padding
            padding = pads_or_word((p_h, p_h, p_w, p_w))
        return Convolution.of(op=CONV, padding=padding, **common)
    if len(args) > 1 or kwargs.get("output_size") is not None:
        raise _Unsupported("called with output_size: its output_padding is chosen per call")
    (p_h, p_w) = layer.padding
    crops = ((p_h, p_h), (p_w, p_w))
    return Convolution.of(op=CONV_TRANSPOSE, padding=crops, output_padding=layer.output_padding, **common)
