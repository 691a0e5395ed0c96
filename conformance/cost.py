"""What one check allocates at its peak, estimated from its shapes before anything is allocated.

A check that would not fit in the memory a check may use is `unsupported`, with the figures, rather
than a MemoryError charged to the framework; one that fits is never refused. The estimate is an
upper bound for the formulation, not a measurement of one library: every tensor the harness and the
check's program make (the float64 arrays a reproduction starts from, the framework's float64 copy
of them, the case dtype's copy), plus the workspace of an im2col lowering of one image, which CPU
libraries fall back to where no direct kernel applies (PyTorch's slow_conv2d and
slow_conv_dilated2d; Eigen's patch extraction is blocked, oneDNN's direct kernels need none).

Only the shapes decide it, so the same check is refused or run the same way on every run of one
machine; the budget is the worker's memory limit (conformance/isolation.py), so a larger machine
runs what a smaller one refuses, and the record says both figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from math import prod
from typing import Protocol

from conformance.dtypes import float_format
from conformance.semantics import AnyGeometry, Sizes, TransposedGeometry

FLOAT64 = 8
# The harness's share of a check: the case's data and float64 reference, its bound, the comparison.
HARNESS = "the harness"


@dataclass(frozen=True)
class Part:
    what: str
    size: int  # bytes


class ShapedCall(Protocol):
    """What the estimate reads of a call (`conformance.adapters.CallParams` has it)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...
    @property
    def kernel_shape(self) -> tuple[int, ...]: ...
    @property
    def geometry(self) -> AnyGeometry: ...
    @property
    def groups(self) -> int: ...
    @property
    def dtype(self) -> str: ...


@dataclass(frozen=True)
class Shapes:
    """The static shapes of a call, channels-last (N, *spatial, C) and (*spatial, I, O): NHWC and HWIO in 2-D."""

    input_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    geometry: AnyGeometry
    groups: int
    dtype: str

    @classmethod
    def of(cls, call: ShapedCall) -> Shapes:
        return cls(call.input_shape, call.kernel_shape, call.geometry, call.groups, call.dtype)

    # (Computed once: every part of an estimate reads them, and an estimate is made for every check.)
    @cached_property
    def itemsize(self) -> int:
        return float_format(self.dtype).numpy_dtype.itemsize

    @cached_property
    def output_shape(self) -> tuple[int, ...]:
        channels = self.kernel_shape[-1]
        if isinstance(self.geometry, TransposedGeometry):  # (*k, C_out / g, C_in)
            channels = self.kernel_shape[-2] * self.groups
        return (self.input_shape[0], *self.geometry.output_size, channels)


def tensor(what: str, shape: Iterable[int], itemsizes: Iterable[int]) -> Part:
    """One tensor in each of the given element sizes (its float64 and case-dtype copies, say)."""
    return Part(what, prod(shape) * sum(itemsizes))


def copies(shapes: Shapes) -> tuple[int, ...]:
    """A tensor of a check's program: the float64 array it starts from, the framework's float64
    tensor of it, and the case dtype's."""
    return (FLOAT64, FLOAT64, shapes.itemsize)


def im2col_workspace(shapes: Shapes, kernel_size: Sizes) -> Part:
    """The column matrix of one image: output pixels x kernel taps x input channels (a transposed
    convolution's: input pixels x taps x output channels, before col2im), at least float32's width
    (half precision is widened on the way on most CPUs)."""
    x, y = shapes.input_shape, shapes.output_shape
    transposed = isinstance(shapes.geometry, TransposedGeometry)
    pixels, channels = (prod(x[1:-1]), y[-1]) if transposed else (prod(y[1:-1]), x[-1])
    width = max(shapes.itemsize, 4)
    return Part(f"im2col workspace of one image ({pixels} pixels x {prod(kernel_size)} taps x {channels})",
                pixels * prod(kernel_size) * channels * width)  # fmt: skip


def harness(shapes: Shapes, derivative_order: int) -> list[Part]:
    """The case's data in its dtype and float64, |x| and |w|, the padded input twice (the reference
    and the bound's sum of |x||w|), the reference and that sum, one tap's window, and the comparison's
    output-sized temporaries; a derivative's cotangent, its float64 reference and the reference's
    zero-spread cotangent too."""
    x, w, y = shapes.input_shape, shapes.kernel_shape, shapes.output_shape
    geo = shapes.geometry
    padded = geo.padded_size if not isinstance(geo, TransposedGeometry) else x[1:-1]
    parts = [
        tensor("input", x, (shapes.itemsize, FLOAT64, FLOAT64)),
        tensor("kernel", w, (shapes.itemsize, FLOAT64, FLOAT64)),
        tensor("padded input", (x[0], *padded, x[-1]), (FLOAT64, FLOAT64)),
        tensor("reference output and bound", y, (FLOAT64,) * 6),
        tensor("one tap's window", (*y[:-1], x[-1]), (FLOAT64,)),
    ]
    if derivative_order:
        parts.append(tensor("cotangent and directions", y, (FLOAT64, FLOAT64, shapes.itemsize)))
        bordered = (p + e - 1 for p, e in zip(padded, geo.effective_kernel, strict=True))
        spread = (y[0], *bordered, y[-1])
        parts.append(tensor("reference gradients", spread, (FLOAT64,) * (1 + derivative_order)))
    return [Part(f"{HARNESS}: {part.what}", part.size) for part in parts]


def framework_call(shapes: Shapes, kernel_size: Sizes | None = None) -> list[Part]:
    """The framework's operands and output in every copy, and the lowering's workspace for the
    kernel the framework is given (`kernel_size`, per spatial axis: a zero-inserted kernel's span, say)."""
    seen = kernel_size or shapes.geometry.kernel_size
    return [
        tensor("input", shapes.input_shape, copies(shapes)),
        tensor("kernel", shapes.kernel_shape, copies(shapes)),
        # oneDNN reorders a kernel into its blocked layout, XLA and Eigen transpose it: one more copy.
        tensor("kernel in the library's layout", (*seen, *shapes.kernel_shape[-2:]), (max(shapes.itemsize, 4),)),
        tensor("output", shapes.output_shape, (shapes.itemsize, FLOAT64)),
        im2col_workspace(shapes, seen),
    ]


def derivative_call(shapes: Shapes, order: int) -> list[Part]:
    """Autodiff keeps the forward pass's operands, and makes the cotangent, both gradients and the
    backward lowering's workspace; a Hessian-vector product goes through all of that twice."""
    forward = framework_call(shapes)
    backward = [
        tensor("cotangent", shapes.output_shape, copies(shapes)),
        tensor("input gradient", shapes.input_shape, (shapes.itemsize, FLOAT64)),
        tensor("kernel gradient", shapes.kernel_shape, (shapes.itemsize, FLOAT64)),
        im2col_workspace(shapes, shapes.geometry.kernel_size),
    ]
    passes = range(1, order + 1)
    return forward + [Part(f"{part.what} (backward pass {n})", part.size) for n in passes for part in backward]


def zero_inserted_call(shapes: Shapes, storage: int) -> list[Part]:
    """The zero-inserted oracle gives the framework the kernel spread to its effective size: that
    kernel as NumPy makes it (`storage` bytes an element), the framework's float64 tensor of it and
    the case dtype's, and the lowering of a kernel that size at rate 1."""
    effective = shapes.geometry.effective_kernel
    spread = (*effective, *shapes.kernel_shape[-2:])
    parts = framework_call(shapes, kernel_size=effective)
    parts.insert(2, tensor(f"zero-inserted kernel {list(spread)}", spread, (storage, FLOAT64, shapes.itemsize)))
    return parts


def format_size(size: int) -> str:
    return f"{size / (1 << 30):.2f} GiB" if size >= 1 << 30 else f"{size / (1 << 20):.0f} MiB"


def over_budget(parts: list[Part], budget: int, budget_source: str) -> str | None:
    """The `unsupported` reason of a check whose estimate exceeds `budget`, naming its largest parts;
    None when it fits."""
    total = sum(part.size for part in parts)
    if total <= budget:
        return None
    largest = sorted(parts, key=lambda part: -part.size)[:3]
    named = "; ".join(f"{part.what} {format_size(part.size)}" for part in largest)
    return (
        f"would need about {format_size(total)} at its peak, more than the {format_size(budget)} a check may "
        f"use here ({budget_source}); largest: {named}"
    )
