"""How each API spells a case's padding. The pads themselves come from `conformance.semantics`
(the only place they are computed); this module only writes them in each framework's order.

Every API here keeps its own SAME/VALID words where it has them, so the suite tests the
framework's SAME rather than ours; only explicit pads (and the explicit-pads oracle) are spelt out.
"""

from __future__ import annotations

from conformance.semantics import AnyGeometry, PaddingSpec, PadPairs, as_transposed, is_symmetric, output_padding_limit


def native_word(padding: PaddingSpec) -> str | None:
    """ "SAME" or "VALID" when the case says so (an API's own word for it), else None."""
    return padding if isinstance(padding, str) else None


def nhwc_pairs(pads: PadPairs) -> list[list[int]]:
    """TensorFlow's explicit NHWC padding: [[0, 0], [top, bottom], [left, right], [0, 0]]."""
    (top, bottom), (left, right) = pads
    return [[0, 0], [top, bottom], [left, right], [0, 0]]


def nchw_pairs(pads: PadPairs) -> list[list[int]]:
    """The same in NCHW order: [[0, 0], [0, 0], [top, bottom], [left, right]]."""
    (top, bottom), (left, right) = pads
    return [[0, 0], [0, 0], [top, bottom], [left, right]]


def spatial_pairs(pads: PadPairs) -> list[tuple[int, int]]:
    """JAX's explicit padding: [(top, bottom), (left, right)]."""
    return [tuple(pair) for pair in pads]  # type: ignore[misc]


def begins_then_ends(pads: PadPairs) -> list[int]:
    """ONNX's `pads`: every axis' begin, then every axis' end: [top, left, bottom, right]."""
    (top, bottom), (left, right) = pads
    return [top, left, bottom, right]


def last_axis_first(pads: PadPairs) -> list[int]:
    """`torch.nn.functional.pad`'s order, last axis first: [left, right, top, bottom]."""
    (top, bottom), (left, right) = pads
    return [left, right, top, bottom]


def torch_same_refusal(padding: PaddingSpec, stride: tuple[int, int]) -> str | None:
    """Why torch cannot state this case's padding (its padding="same" exists at stride 1 only), or None."""
    if padding == "SAME" and stride != (1, 1):
        return "torch's padding='same' is only defined for stride 1"
    return None


def torch_arguments(padding: PaddingSpec, pads: PadPairs) -> tuple[str | tuple[int, int], list[int] | None]:
    """(conv2d's `padding=`, the `F.pad` to apply first or None): "same"/"valid" where the case
    says so, symmetric pads as (pad_h, pad_w), asymmetric ones as `F.pad` then no padding (the
    usual porting idiom, since conv2d takes only one pad per axis)."""
    word = native_word(padding)
    if word is not None:
        return word.lower(), None
    if is_symmetric(pads):
        return (pads[0][0], pads[1][0]), None
    return (0, 0), last_axis_first(pads)


def torch_transpose_arguments(geometry: AnyGeometry) -> tuple[tuple[int, int], tuple[int, int]] | str:
    """conv_transpose2d's (padding=, output_padding=), or why it cannot state these crops.

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
    return (paddings[0], paddings[1]), (extras[0], extras[1])


def dilated_input_pads(geometry: AnyGeometry) -> list[tuple[int, int]]:
    """A transposed convolution's crops as pads of the stride-dilated input (JAX's conv_transpose and
    lhs_dilation): the full output has k_eff - 1 pads on both sides, so a crop c is a pad
    k_eff - 1 - c, and output_padding pads the end further."""
    geo = as_transposed(geometry)
    return [
        (k_eff - 1 - before, k_eff - 1 - after + extra)
        for k_eff, (before, after), extra in zip(geo.effective_kernel_hw, geo.pads, geo.output_padding, strict=True)
    ]
