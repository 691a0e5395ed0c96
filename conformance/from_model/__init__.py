"""From a real model to a case file: every 1-D, 2-D and 3-D convolution of a model, one case per
distinct configuration.

`python -m conformance from-model MODEL -o DIR [--input-shape N,...,C] [--weights]` reads

- an ONNX file (`onnx_model.py`: Conv and ConvTranspose nodes, shapes from ONNX shape inference),
- a Keras model file, `.keras` (`keras_model.py`: Conv1D/2D/3D (causal included), DepthwiseConv1D/2D,
  SeparableConv1D/2D, Conv1D/2D/3DTranspose with their input shapes),
- a torch module given as `package.module:factory` (`torch_model.py`: each nn.Conv1d/2d/3d and
  nn.ConvTranspose1d/2d/3d as it is called on a zero tensor of `--input-shape`),

each reader turning what it finds into `Convolution`s in the suite's own terms (channels-last input,
(*spatial, I, O) kernel, pads per side), and what it cannot into `Skipped` entries with the reason. Identical
configurations are merged into one case that lists every layer using it; data is seeded from the
first layer's name, so the cases are the same on every run. With `--weights` a case's kernel is
the model's own (the first layer's), stored in an .npz beside the case file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conformance import layouts
from conformance.semantics import CONV, CONV_TRANSPOSE, PadPairs, Sizes, per_axis

Padding = str | PadPairs


class ModelError(Exception):
    """The model cannot be read at all (missing, malformed, truncated): the message names the file."""


@dataclass(frozen=True)
class Convolution:
    """One convolution as the model computes it, in the case format's terms."""

    layer: str
    op: str  # CONV or CONV_TRANSPOSE
    input_shape: tuple[int, ...]  # channels-last: (N, *spatial, C), NHWC in 2-D
    kernel_shape: tuple[int, ...]  # (*spatial, I, O): HWIO in 2-D; transposed: (*spatial, C_out / groups, C_in)
    rate: Sizes
    stride: Sizes
    # "SAME", "VALID", "CAUSAL" or (before, after) per axis, ((top, bottom), (left, right)) in 2-D; transposed: crops
    padding: Padding
    groups: int = 1
    output_padding: Sizes = (0, 0)
    kernel: np.ndarray | None = field(default=None, compare=False, repr=False)  # the model's own, HWIO

    @classmethod
    def of(
        cls,
        layer: str,
        op: str,
        input_shape: Sequence[int],
        kernel_shape: Sequence[int],
        rate: Sequence[int],
        stride: Sequence[int],
        padding: Padding,
        groups: int = 1,
        output_padding: int | Sequence[int] = 0,
        kernel: np.ndarray | None = None,
    ) -> Convolution:
        """From what a reader holds (lists, framework tuples, numpy ints), as plain int tuples."""
        shape = tuple(int(d) for d in input_shape)
        rank = len(shape) - 2
        return cls(layer, op, shape, tuple(int(d) for d in kernel_shape), per_axis(rate, rank), per_axis(stride, rank),
                   padding, int(groups), per_axis(output_padding, rank), kernel)  # fmt: skip

    @property
    def configuration(self) -> tuple[object, ...]:
        return (self.op, self.input_shape, self.kernel_shape, self.rate, self.stride, self.padding, self.groups,
                self.output_padding)  # fmt: skip


@dataclass(frozen=True)
class Skipped:
    layer: str
    reason: str


@dataclass
class Found:
    convolutions: list[Convolution] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def channels_first(shape: Sequence[int]) -> tuple[int, ...]:
    """(N, *spatial, C) as (N, C, *spatial): the layout torch modules and ONNX graphs take."""
    return tuple(shape[axis] for axis in layouts.channels_first(len(shape) - 2))


def pads_or_word(pads: Sequence[int]) -> Padding:
    """Each axis' (before, after) in turn, (top, bottom, left, right) in 2-D, as the case format states
    them: "VALID" when all are zero."""
    sides = [int(p) for p in pads]
    return "VALID" if not any(sides) else tuple(zip(sides[::2], sides[1::2], strict=True))


def read(model: str, input_shape: tuple[int, ...] | None) -> Found:
    """The convolutions of `model`: a .onnx or .keras file, or a torch `package.module:factory`."""
    path = Path(model)
    if path.suffix == ".onnx":
        from conformance.from_model import onnx_model

        return onnx_model.read(path, input_shape)
    if path.suffix == ".keras":
        from conformance.from_model import keras_model

        return keras_model.read(path, input_shape)
    if ":" in model and not path.exists():
        from conformance.from_model import torch_model

        return torch_model.read(model, input_shape)
    raise ModelError(
        f"{model}: not a model this reads (an .onnx file, a .keras file, or a torch module as package.module:factory)"
    )


def file_stem(model: str) -> str:
    """The case file's name: deeplab_v3.onnx -> deeplab_v3_onnx; pkg.deeplab:torch_model -> deeplab_torch_model."""
    path = Path(model)
    if path.suffix in (".onnx", ".keras"):
        return f"{path.stem}_{path.suffix[1:]}"
    module, _, factory = model.partition(":")
    return f"{module.rsplit('.', 1)[-1]}_{factory}"


def _seed(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def _name(text: str) -> str:
    """A layer name as an .npz key and a case-id part."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "layer"


def _case_id(number: int, conv: Convolution) -> str:
    out = conv.kernel_shape[-1] if conv.op == CONV else conv.kernel_shape[-2] * conv.groups
    padding = (
        conv.padding.lower()
        if isinstance(conv.padding, str)
        else "p" + ".".join(str(p) for pair in conv.padding for p in pair)
    )
    kind = "conv" if conv.op == CONV else "tconv"
    return (f"{number:02d}-{kind}-in{_by(conv.input_shape)}-k{_by(conv.kernel_shape[:-2])}-o{out}-r{_by(conv.rate)}"
            f"-s{_by(conv.stride)}-{padding}-g{conv.groups}")  # fmt: skip


def _by(sizes: Sequence[int]) -> str:
    """3x5: sizes as a case id writes them."""
    return "x".join(str(size) for size in sizes)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def write_cases(
    found: Found,
    model: str,
    out_dir: Path,
    *,
    weights: bool = False,
    tier: str = "default",
    dtypes: Sequence[str] = ("float32",),
) -> Path:
    """The case file (and, with `weights`, the .npz of kernels) for what `read` found; returns its path."""
    stem = _name(file_stem(model))
    groups: dict[tuple[object, ...], list[Convolution]] = {}
    for conv in found.convolutions:
        groups.setdefault(conv.configuration, []).append(conv)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# Written by `python -m conformance from-model {Path(model).name if Path(model).exists() else model}`:",
        f"# {len(found.convolutions)} convolution(s), {len(groups)} distinct configuration(s), one case each.",
    ]
    lines += [f"# not turned into a case: {s.layer}: {s.reason}" for s in found.skipped]
    lines += [
        f"description = {_toml_string(f'Every distinct convolution of {model}, with the layers that use it.')}",
        *([f'tier = "{tier}"'] if tier != "default" else []),
        "",
        "[defaults]",
        f'tags = ["from-model", {_toml_string(stem)}]',
        f"dtypes = [{', '.join(_toml_string(d) for d in dtypes)}]",
        f"source = {_toml_string(f'from-model {model}')}",
    ]
    stored: dict[str, np.ndarray] = {}
    for number, convs in enumerate(groups.values(), start=1):
        first = convs[0]
        names = [c.layer for c in convs]
        description = f"{len(names)} layer(s): {', '.join(names)}"
        lines += ["", "[[case]]", f"id = {_toml_string(_case_id(number, first))}"]
        input_spec = (
            f'{{ generator = "normal", seed = {_seed(first.layer + "/input")}, shape = {list(first.input_shape)} }}'
        )
        if weights and first.kernel is not None:
            key = _name(first.layer)
            stored[key] = np.asarray(first.kernel, dtype=np.float32 if first.kernel.dtype != np.float64 else np.float64)
            kernel_spec = f'{{ file = "{stem}.npz", key = {_toml_string(key)} }}'
            description += f"; kernel: the model's own, of {first.layer}"
        else:
            seed = _seed(first.layer + "/kernel")
            kernel_spec = f'{{ generator = "normal", seed = {seed}, shape = {list(first.kernel_shape)} }}'
        lines += [
            f"description = {_toml_string(description)}",
            f"input = {input_spec}",
            f"kernel = {kernel_spec}",
            f"rate = {list(first.rate)}",
            f"stride = {list(first.stride)}",
            "padding = "
            + (f'"{first.padding}"' if isinstance(first.padding, str) else str([list(p) for p in first.padding])),
        ]
        if first.groups != 1:
            lines.append(f"groups = {first.groups}")
        if first.op == CONV_TRANSPOSE:
            lines.append(f'op = "{CONV_TRANSPOSE}"')
            if any(first.output_padding):
                lines.append(f"output_padding = {list(first.output_padding)}")
    path = out_dir / f"{stem}.toml"
    if stored:
        np.savez(out_dir / f"{stem}.npz", **stored)  # type: ignore[arg-type]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
