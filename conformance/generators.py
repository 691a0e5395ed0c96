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


# Elements per block of the normal generator: its 12 words per element (1.5 MiB) stay in cache while
# they are summed, where one pass over the whole tensor per term read 12 times the memory.
_NORMAL_BLOCK = 16384


def _raw_words(seed: int, count: int) -> np.ndarray:
    return np.random.PCG64(seed).random_raw(count)  # (uint64 already: no copy)


def _to_unit_uniforms(words: np.ndarray) -> np.ndarray:
    """Floats in [0, 1): the top 53 bits of each word, scaled by 2**-53 (exact). Shifts `words` in
    place: callers hand over a fresh draw."""
    words >>= np.uint64(11)
    floats = words.astype(np.float64)
    floats *= 2.0**-53
    return floats


def _standard_normals(seed: int, count: int) -> np.ndarray:
    """Irwin-Hall: each element is the sum of its 12 consecutive uniforms, left to right, minus 6.
    Drawn block by block from one bit generator: consecutive `random_raw` calls continue one stream,
    so the words (and every sum) are those of a single call."""
    bits = np.random.PCG64(seed)
    out = np.empty(count, dtype=np.float64)
    for start in range(0, count, _NORMAL_BLOCK):
        stop = min(count, start + _NORMAL_BLOCK)
        u = _to_unit_uniforms(bits.random_raw((stop - start) * _IRWIN_HALL_TERMS)).reshape(-1, _IRWIN_HALL_TERMS)
        # An explicit left-to-right sum: a reduction's order may vary with NumPy's SIMD paths.
        standard = out[start:stop]
        standard[:] = u[:, 0]
        for term in range(1, _IRWIN_HALL_TERMS):
            standard += u[:, term]
    out -= 6.0
    return out


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
        return (start + (end - start) * _to_unit_uniforms(_raw_words(seed, count))).reshape(shape)
    if kind == "normal":
        mean, std = float(spec.get("mean", 0.0)), float(spec.get("std", 1.0))
        standard = _standard_normals(seed, count)
        return (mean + std * standard).reshape(shape)
    raise ValueError(f"unknown generator {kind!r}")


def content_hash(array: np.ndarray) -> str:
    """sha256 of dtype, shape and bytes: two runs agree on the data exactly when this agrees."""
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.name}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
