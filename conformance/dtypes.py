"""The floating-point formats a case may run in, and the constants the error bound needs."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    name: str
    numpy_dtype: np.dtype
    # Significand precision t in bits (implicit bit included): integers up to 2**t are exact.
    precision_bits: int
    smallest_normal: float
    max_finite: float

    @property
    def unit_roundoff(self) -> float:
        """u = 2**-t: the relative error of one round-to-nearest."""
        return 2.0**-self.precision_bits


def _format(name: str, dtype: type) -> FloatFormat:
    info = ml_dtypes.finfo(dtype)
    return FloatFormat(
        name=name,
        numpy_dtype=np.dtype(dtype),
        precision_bits=int(info.nmant) + 1,
        smallest_normal=float(info.smallest_normal),
        max_finite=float(info.max),
    )


FORMATS: dict[str, FloatFormat] = {
    "float64": _format("float64", np.float64),
    "float32": _format("float32", np.float32),
    "float16": _format("float16", np.float16),
    "bfloat16": _format("bfloat16", ml_dtypes.bfloat16),
}

# TF32 keeps float32's range but rounds the *inputs* of each product to 11 significant bits.
TF32_PRECISION_BITS = 11

DTYPE_NAMES: tuple[str, ...] = tuple(FORMATS)


def float_format(name: str) -> FloatFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPE_NAMES)}") from None


def case_values(values: np.ndarray, name: str) -> np.ndarray:
    """Float64 case data in the case dtype, the same bytes with every ml_dtypes release: bfloat16
    goes through float32 (round to float32, then to bfloat16). ml_dtypes before 0.7 converted
    float64 that way and 0.7 rounds once, which changes a few values of a large tensor; the
    corpus' recorded inputs (tests/data/tensor_hashes.json, every stored result's input hash) were
    made the first way, and a case must mean the same data everywhere. The data need not be the
    nearest bfloat16 values, only the same ones: the reference starts from them."""
    if name == "bfloat16":
        values = values.astype(np.float32)
    return values.astype(float_format(name).numpy_dtype)
