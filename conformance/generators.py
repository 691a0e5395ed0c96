"""Seeded tensor generators whose bytes are the same on every machine, process and NumPy release.

NumPy promises a stable *bit stream* for a BitGenerator, but not for its distribution methods
(`Generator.normal` may change algorithm between releases). So the values here are derived
from PCG64's raw 64-bit words with arithmetic that IEEE 754 rounds identically everywhere:
only integer operations, additions and multiplications by powers of two. No libm call
(log, cos) is involved, because those may differ in the last bit between platforms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

RANDOM_GENERATORS = ("integers", "uniform", "normal")
# Irwin-Hall: the sum of 12 uniforms on [0, 1) minus 6 has mean 0 and variance 1.
_IRWIN_HALL_TERMS = 12


def _raw_words(seed: int, count: int) -> np.ndarray:
    return np.random.PCG64(seed).random_raw(count).astype(np.uint64)


def _unit_uniforms(seed: int, count: int) -> np.ndarray:
    """Floats in [0, 1): the top 53 bits of each word, scaled by 2**-53 (exact)."""
    return (_raw_words(seed, count) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def generate(spec: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The float64 tensor that a validated generator spec describes, with its `set` elements."""
    values = _generate(spec, shape)
    for element in spec.get("set", []):
        values[tuple(element["at"])] = float(element["value"])
    return values


def _generate(spec: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    kind = spec["generator"]
    count = int(np.prod(shape, dtype=np.int64))
    if kind == "arange":
        start = float(spec.get("start", 0))
        step = float(spec.get("step", 1))
        return (start + step * np.arange(count, dtype=np.float64)).reshape(shape)
    if kind == "ones":
        return np.ones(shape, dtype=np.float64)
    if kind == "zeros":
        return np.zeros(shape, dtype=np.float64)
    if kind == "full":
        return np.full(shape, float(spec["value"]), dtype=np.float64)
    seed = int(spec["seed"])
    if kind == "integers":
        low, high = int(spec["low"]), int(spec["high"])
        span = np.uint64(high - low + 1)
        # Modulo bias is below 2**-50 for any span a case can state; determinism matters more.
        return (low + (_raw_words(seed, count) % span).astype(np.int64)).astype(np.float64).reshape(shape)
    if kind == "uniform":
        start, end = float(spec.get("low", -1.0)), float(spec.get("high", 1.0))
        return (start + (end - start) * _unit_uniforms(seed, count)).reshape(shape)
    if kind == "normal":
        mean, std = float(spec.get("mean", 0.0)), float(spec.get("std", 1.0))
        u = _unit_uniforms(seed, count * _IRWIN_HALL_TERMS).reshape(count, _IRWIN_HALL_TERMS)
        # An explicit left-to-right sum: a reduction's order may vary with NumPy's SIMD paths.
        standard = u[:, 0].copy()
        for term in range(1, _IRWIN_HALL_TERMS):
            standard += u[:, term]
        standard -= 6.0
        return (mean + std * standard).reshape(shape)
    raise ValueError(f"unknown generator {kind!r}")


def content_hash(array: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes: two runs agree on the data exactly when this agrees."""
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.name}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
