"""What a case is: the `Case` the loader builds, the errors it reports, and a case's data made in
one dtype (`materialize`: generated in float64, then rounded to the case dtype: `dtypes.case_values`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from conformance import held_memory
from conformance.dtypes import case_values
from conformance.generators import content_hash, generate
from conformance.semantics import (
    CONV,
    CONV_TRANSPOSE,
    AnyGeometry,
    PaddingSpec,
    Sizes,
    geometry,
    transposed_geometry,
)


@dataclass(frozen=True)
class CaseError:
    """A problem in a case file, precise enough to fix without reading the harness."""

    file: str
    message: str
    case: str | None = None
    field: str | None = None
    line: int | None = None
    entry: str = "case"  # or "sweep": what `case` names

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        parts = [where]
        if self.case:
            parts.append(f"{self.entry} {self.case!r}")
        if self.field:
            parts.append(f"field {self.field!r}")
        return ": ".join(parts) + f": {self.message}"


class CaseFileError(Exception):
    def __init__(self, error: CaseError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True, eq=False)  # identity hash: a Case is a cache key for its data
class Case:
    file: str
    suite: str  # the file's stem, e.g. "documents"
    id: str
    line: int | None
    description: str
    source: str
    tags: tuple[str, ...]
    dtypes: tuple[str, ...]
    input_spec: Mapping[str, Any]
    kernel_spec: Mapping[str, Any]
    input_shape: tuple[int, ...]  # channels-last, (N, *spatial, C): NHWC
    kernel_shape: tuple[int, ...]  # (*spatial, C_in / groups, C_out): HWIO
    rate: Sizes  # per spatial axis
    stride: Sizes
    padding: PaddingSpec
    groups: int
    expect_kind: str  # "reference", "values" or "no-valid-output"
    tier: str = "default"  # "extended": only with --conformance-tier extended
    derivatives: int = 0  # 1: also the gradients; 2: also Hessian-vector products (conformance.derivatives)
    # "conv", or "conv_transpose": its input is what the forward op outputs, its kernel is the forward
    # op's HWIO kernel (k_h, k_w, C_out / groups, C_in), and explicit pads are what it crops.
    op: str = CONV
    output_padding: Sizes = (0, 0)  # conv_transpose only: pixels added at the end of each spatial axis
    expected_values: np.ndarray | None = dataclass_field(default=None, repr=False)

    @property
    def qualified_id(self) -> str:
        return f"{self.suite}/{self.id}"

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its geometry, which unpickled would be a copy: cases share one per geometry."""
        return {name: value for name, value in self.__dict__.items() if name != "geometry"}

    @property
    def rank(self) -> int:
        """The number of spatial axes."""
        return len(self.input_shape) - 2

    @property
    def transposed(self) -> bool:
        return self.op == CONV_TRANSPOSE

    @cached_property  # read several times per check; a frozen Case never changes it
    def geometry(self) -> AnyGeometry:
        """The case's op's geometry: a `Geometry`, or a `TransposedGeometry` for conv_transpose."""
        spatial = (self.padding, self.input_shape[1:-1], self.kernel_shape[:-2], self.rate, self.stride)
        try:
            return _shared_geometry(self.transposed, *spatial, self.output_padding)
        except TypeError:  # (settings that do not hash: made for this case alone)
            return _shared_geometry.__wrapped__(self.transposed, *spatial, self.output_padding)

    @property
    def output_channels(self) -> int:
        return self.kernel_shape[-2] * self.groups if self.transposed else self.kernel_shape[-1]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.input_shape[0], *self.geometry.output_size, self.output_channels)

    @property
    def expects_no_output(self) -> bool:
        return not self.geometry.has_valid_output


@dataclass
class LoadResult:
    cases: list[Case]
    errors: list[CaseError]


@dataclass(frozen=True)
class CaseData:
    """One case materialised in one dtype: what every target of that (case, dtype) shares."""

    x: np.ndarray  # NHWC, in the case dtype
    w: np.ndarray  # HWIO, in the case dtype
    x_hash: str
    w_hash: str


@lru_cache(maxsize=32)
def stored_array(file: str, key: str) -> np.ndarray:
    """An array of a .npz file (a model's own kernel), in float64; read once per process."""
    with np.load(file, allow_pickle=False) as arrays:
        if key not in arrays.files:
            raise KeyError(f"no array named {key!r} (it has {', '.join(arrays.files[:8]) or 'none'})")
        values: np.ndarray = arrays[key].astype(np.float64)
    values.flags.writeable = False  # (shared by every check of the case)
    return values


def tensor(spec: Mapping[str, Any], shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A case tensor: made in float64, then rounded to the case dtype (see dtypes.case_values)."""
    if "file" in spec:
        values = stored_array(spec["file"], spec["key"])
    else:
        values = np.asarray(spec["values"], dtype=np.float64) if "values" in spec else generate(spec, shape)
    return case_values(values, dtype)


# The runner's forward reference and the derivatives' tangents both need a case's data: made once.
@held_memory.bounded_cache(16)
def materialize(case: Case, dtype: str) -> CaseData:
    x = tensor(case.input_spec, case.input_shape, dtype)
    w = tensor(case.kernel_spec, case.kernel_shape, dtype)
    return CaseData(x=x, w=w, x_hash=content_hash(x), w_hash=content_hash(w))


held_memory.on_release(stored_array.cache_clear)


# One geometry per distinct settings, shared by the cases that state them (geometries are frozen): a
# sweep's replicates (the large tier draws each of its geometries 130 times) resolve theirs once.
@lru_cache(maxsize=4096)
def _shared_geometry(
    transposed: bool,
    padding: Any,
    input_size: tuple[int, ...],
    kernel_size: tuple[int, ...],
    rate: tuple[int, ...],
    stride: tuple[int, ...],
    output_padding: Any,
) -> AnyGeometry:
    if transposed:
        return transposed_geometry(padding, input_size, kernel_size, rate, stride, output_padding)
    return geometry(padding, input_size, kernel_size, rate, stride)
