"""How each API spells a case's padding. The pads themselves come from `conformance.semantics`
(the only place they are computed); this module only writes them in each framework's order.

Every API here keeps its own SAME/VALID words where it has them, so the suite tests the
framework's SAME rather than ours; only explicit pads (and the explicit-pads oracle) are spelt out.
Every helper takes one (before, after) pair per spatial axis, whatever their number.
"""

from __future__ import annotations

from conformance.semantics import (
    AnyGeometry,
    PaddingSpec,
    PadPairs,
    Sizes,
    as_transposed,
    is_symmetric,
    output_padding_limit,
)


def native_word(padding: PaddingSpec) -> str | None:
    """ "SAME" or "VALID" when the case says so (an API's own word for it), else None. CAUSAL is
    Keras' word only (Conv1D): every other API takes it as the explicit pads it is."""
    return padding if padding in ("SAME", "VALID") else None


def channels_last_pairs(pads: PadPairs) -> list[list[int]]:
    """TensorFlow's explicit padding for channels-last data (NWC, NHWC, NDHWC): one pair per axis,
    none on batch and channels: [[0, 0], [top, bottom], [left, right], [0, 0]] in 2-D."""
    return [[0, 0], *([before, after] for before, after in pads), [0, 0]]


def channels_first_pairs(pads: PadPairs) -> list[list[int]]:
    """The same for channels-first data (NCW, NCHW, NCDHW): [[0, 0], [0, 0], [top, bottom], [left, right]] in 2-D."""
    return [[0, 0], [0, 0], *([before, after] for before, after in pads)]


def spatial_pairs(pads: PadPairs) -> list[tuple[int, int]]:
    """JAX's explicit padding: one (before, after) per spatial axis, [(top, bottom), (left, right)] in 2-D."""
    return [(before, after) for before, after in pads]


def begins_then_ends(pads: PadPairs) -> list[int]:
    """ONNX's `pads`: every axis' begin, then every axis' end: [top, left, bottom, right] in 2-D."""
    return [before for before, _ in pads] + [after for _, after in pads]


def last_axis_first(pads: PadPairs) -> list[int]:
    """`torch.nn.functional.pad`'s order, last axis first: [left, right, top, bottom] in 2-D."""
    return [side for before, after in reversed(pads) for side in (before, after)]


def torch_same_refusal(padding: PaddingSpec, stride: Sizes) -> str | None:
    """Why torch cannot state this case's padding (its padding="same" exists at stride 1 only), or None."""
    if padding == "SAME" and any(s != 1 for s in stride):
        return "torch's padding='same' is only defined for stride 1"
    return None


def torch_arguments(padding: PaddingSpec, pads: PadPairs) -> tuple[str | Sizes, list[int] | None]:
    """(convNd's `padding=`, the `F.pad` to apply first or None): "same"/"valid" where the case
    says so, symmetric pads as one pad per axis ((pad_h, pad_w) in 2-D), asymmetric ones as `F.pad`
    then no padding (the usual porting idiom, since convNd takes only one pad per axis)."""
    word = native_word(padding)
    if word is not None:
        return word.lower(), None
    if is_symmetric(pads):
        return tuple(before for before, _ in pads), None
    return (0,) * len(pads), last_axis_first(pads)


def torch_transpose_arguments(geometry: AnyGeometry) -> tuple[Sizes, Sizes] | str:
    """conv_transposeNd's (padding=, output_padding=), one value per axis each, or why it cannot
    state these crops.

    torch crops `padding` from both ends alike and adds `output_padding` at the end, which must stay
    below max(stride, dilation): crops (before, after) with output_padding e are padding=before with
    output_padding e + before - after. TensorFlow's SAME with an odd total crop (after = before + 1,
    e = 0) needs -1: not expressible, the pixel Keras' torch backend has to move by hand."""
    geo = as_transposed(geometry)
    paddings, extras = [], []
    for (before, after), extra, s, r in zip(geo.pads, geo.output_padding, geo.stride, geo.rate, strict=True):
        added = extra + before - after
        if not 0 <= added < output_padding_limit(s, r):
            return (
                f"torch crops both sides alike: crops ({before}, {after}) with output_padding {extra} need "
                f"padding={before}, output_padding={added}, outside 0..{output_padding_limit(s, r) - 1}"
            )
        paddings.append(before)
        extras.append(added)
    return tuple(paddings), tuple(extras)


def dilated_input_pads(geometry: AnyGeometry) -> list[tuple[int, int]]:
    """A transposed convolution's crops as pads of the stride-dilated input (JAX's conv_transpose and
    lhs_dilation), one (before, after) per axis: the full output has k_eff - 1 pads on both sides,
    so a crop c is a pad k_eff - 1 - c, and output_padding pads the end further."""
    geo = as_transposed(geometry)
    return [
        (k_eff - 1 - before, k_eff - 1 - after + extra)
        for k_eff, (before, after), extra in zip(geo.effective_kernel, geo.pads, geo.output_padding, strict=True)
    ]
