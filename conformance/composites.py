"""The reference documents' multi-layer examples, run layer by layer through each framework.

- Stacks of 3x3 dilated layers (HDC [1, 2, 3] and [1, 2, 5] against DeepLab's gridding [2, 2, 2]):
  with all-ones kernels, a one-hot input and SAME padding, the output of the stack counts the
  paths from the centre pixel to every pixel. These kernels are symmetric, so that map is also
  the centre output's receptive field: which input pixels reach it, and how often. It is
  computed by the framework, compared bit for bit (every count is a small integer) with the exact
  map, and the documents' claims (its size, whether it has holes) are checked against it.
- ASPP (DeepLab v3): parallel 1x1 and 3x3 branches at rates 6, 12, 18, an image-pooling branch
  (global mean, 1x1, broadcast), concatenated and merged by a 1x1 convolution. With integer
  data in {-1, 0, 1} on a 16x16 map every intermediate (means of 256 integers included) is exact
  in float32, so the framework's result must equal the float64 reference bit for bit.

- The U-Net bottleneck of seeds/004: two 3x3 convolutions at rate 2, SAME, each followed by ReLU,
  on integer data (bit-exact in float32 and float64 as well).

Each composite is written once, against `Graph` (conv, relu, global mean, broadcast, concat). A
target runs it layer by layer: the convolutions are the framework's (through its adapter) and the
glue between them is NumPy, identical for every target. A target whose adapter `runs_models`
(Keras) builds the whole composite as one model of its framework instead, glue layers included,
so the graph is checked as users run it (fusion and compilation included), not NumPy between calls.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from conformance import reference, timing
from conformance.cases import Case, CaseError
from conformance.generators import generate

FILE_NAME = "composites.toml"
ASPP_BRANCH_CHANNELS = 2
KINDS = ("stack", "aspp", "bottleneck")


@dataclass(frozen=True)
class Composite:
    kind: str  # one of KINDS
    id: str
    description: str
    source: str
    rates: tuple[int, ...]
    receptive_field: int | None = None  # the documents' claim, for stacks
    holes: bool | None = None
    size: int = 16
    channels: int = 4
    seed: int = 0

    @property
    def input_size(self) -> int:
        if self.kind == "stack":  # room for the whole field around the centre pixel
            return 2 * sum(self.rates) + 9
        return self.size

    def first_layer(self) -> tuple[dict[str, Any], dict[str, Any], tuple[int, ...], tuple[int, ...], int]:
        """(input spec, kernel spec, input shape, kernel shape, rate) of the composite's first call."""
        s = self.input_size
        if self.kind == "stack":  # a one-hot centre pixel through all-ones kernels
            centre = {"at": [0, s // 2, s // 2, 0], "value": 1.0}
            return (
                {"generator": "zeros", "set": [centre]},
                {"generator": "ones"},
                (1, s, s, 1),
                (3, 3, 1, 1),
                self.rates[0],
            )
        integers = {"generator": "integers", "low": -1, "high": 1}
        x_spec, w_spec = {**integers, "seed": self.seed}, {**integers, "seed": self.seed + 1}
        c = self.channels
        if self.kind == "bottleneck":
            return x_spec, w_spec, (1, s, s, c), (3, 3, c, c), self.rates[0]
        return x_spec, w_spec, (1, s, s, c), (1, 1, c, ASPP_BRANCH_CHANNELS), 1

    def as_case(self, file: str) -> Case:
        """A case record for results and the report: the first call's data and geometry (so the
        reproduction repeats that call exactly), the whole composite in the description."""
        input_spec, kernel_spec, input_shape, kernel_shape, rate = self.first_layer()
        return Case(
            file=file,
            suite="composites",
            id=self.id,
            line=None,
            description=self.description,
            source=self.source,
            tags=("composite", self.kind),
            dtypes=("float32", "float64"),
            input_spec=input_spec,
            kernel_spec=kernel_spec,
            input_shape=input_shape,
            kernel_shape=kernel_shape,
            rate=(rate, rate),
            stride=(1, 1),
            padding="SAME",
            groups=1,
            expect_kind="reference",
        )


def load(path: Path, label: str) -> tuple[list[Composite], list[CaseError]]:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return [], [CaseError(label, f"cannot read composites: {exc}")]
    composites, errors = [], []
    for kind in KINDS:
        for raw in document.get(kind, []):
            try:
                rates = tuple(int(r) for r in raw["rates"])
                if not rates or min(rates) < 1:
                    raise ValueError("rates must be positive integers")
                composites.append(
                    Composite(
                        kind=kind,
                        id=str(raw["id"]),
                        description=str(raw.get("description", "")),
                        source=str(raw.get("source", "")),
                        rates=rates,
                        receptive_field=raw.get("receptive_field"),
                        holes=raw.get("holes"),
                        size=int(raw.get("size", 16)),
                        channels=int(raw.get("channels", 4)),
                        seed=int(raw.get("seed", 0)),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                field = exc.args[0] if isinstance(exc, KeyError) else None
                name = raw.get("id") if isinstance(raw, dict) else None
                errors.append(CaseError(label, f"[[{kind}]]: {exc}", name, field, entry=kind))
    return composites, errors


Conv = Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (x, HWIO w, rate) -> SAME, stride-1 output


def reference_conv(x: np.ndarray, w: np.ndarray, rate: int) -> np.ndarray:
    with timing.spent(timing.REFERENCE):
        return reference.conv(x, w, rate=(rate, rate), stride=(1, 1), padding="SAME", groups=1)


class Graph(Protocol):
    """What a composite is built from: NumPy values layer by layer, or a framework's model."""

    def conv(self, x: Any, w: np.ndarray, rate: int) -> Any:
        """A SAME, stride-1 convolution with the HWIO kernel `w`."""

    def relu(self, x: Any) -> Any: ...

    def global_mean(self, x: Any) -> Any:
        """The mean over the spatial axes, kept as a 1x1 map."""

    def broadcast(self, x: Any, size: int) -> Any:
        """A 1x1 map repeated to size x size (DeepLab resizes the pooled branch back up)."""

    def concat(self, xs: list[Any]) -> Any:
        """Along the channels."""


@dataclass(frozen=True)
class LayerByLayer:
    """The graph with each convolution through `conv` and NumPy glue between them."""

    conv: Conv

    def relu(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.maximum(x, 0.0))

    def global_mean(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x.mean(axis=(1, 2), keepdims=True))  # exact here: integer sums over a power of two

    def broadcast(self, x: np.ndarray, size: int) -> np.ndarray:
        return np.broadcast_to(x, (x.shape[0], size, size, x.shape[3]))

    def concat(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs, axis=3)


def kernels(composite: Composite) -> list[np.ndarray]:
    """The composite's kernels (HWIO, float64), in the order its layers use them."""
    collected: list[np.ndarray] = []

    def record(x: np.ndarray, w: np.ndarray, rate: int) -> np.ndarray:
        collected.append(w)
        return x

    build(composite, LayerByLayer(record), composite_input(composite))
    return collected


def composite_input(composite: Composite) -> np.ndarray:
    input_spec, _, input_shape, _, _ = composite.first_layer()
    return generate(input_spec, input_shape)


def build(composite: Composite, graph: Graph, x: Any) -> Any:
    """The composite's output for input `x`, built from `graph`'s layers."""
    return {"stack": _stack, "aspp": _aspp, "bottleneck": _bottleneck}[composite.kind](composite, graph, x)


def _stack(composite: Composite, graph: Graph, x: Any) -> Any:
    """Path counts from the centre pixel through the stack (all-ones 3x3 kernels, one channel)."""
    _, kernel_spec, _, kernel_shape, _ = composite.first_layer()
    ones = generate(kernel_spec, kernel_shape)
    for rate in composite.rates:
        x = graph.conv(x, ones, rate)
    return x


def stack_paths(composite: Composite, conv: Conv) -> np.ndarray:
    paths: np.ndarray = build(composite, LayerByLayer(conv), composite_input(composite))
    return paths[0, :, :, 0]


def field_facts(paths: np.ndarray) -> tuple[int, bool]:
    """(side of the covered square, whether some pixel inside it is not reached)."""
    rows, cols = np.nonzero(paths)
    if not rows.size:
        return 0, False
    box = paths[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return int(max(box.shape)), bool((box == 0).any())


def _aspp(composite: Composite, graph: Graph, x: Any) -> Any:
    """DeepLab v3's ASPP head on the composite's seeded integer data (branches of 2 channels)."""
    _, kernel_spec, _, kernel_shape, _ = composite.first_layer()
    s, c, seed = composite.size, composite.channels, composite.seed
    spec = {"generator": "integers", "low": -1, "high": 1}
    branch_out = ASPP_BRANCH_CHANNELS
    branches = [graph.conv(x, generate(kernel_spec, kernel_shape), 1)]
    for number, rate in enumerate(composite.rates, start=2):
        branches.append(graph.conv(x, generate({**spec, "seed": seed + number}, (3, 3, c, branch_out)), rate))
    pool_w = generate({**spec, "seed": seed + 20}, (1, 1, c, branch_out))
    branches.append(graph.broadcast(graph.conv(graph.global_mean(x), pool_w, 1), s))
    merge_w = generate({**spec, "seed": seed + 21}, (1, 1, branch_out * len(branches), 3))
    return graph.conv(graph.concat(branches), merge_w, 1)


def _bottleneck(composite: Composite, graph: Graph, x: Any) -> Any:
    """The U-Net bottleneck of seeds/004: 3x3 SAME convolutions at the composite's rates, each
    followed by ReLU (integers: every value, up to C*9 * C*9, is exact)."""
    _, kernel_spec, _, kernel_shape, _ = composite.first_layer()
    spec = {"generator": "integers", "low": -1, "high": 1}
    for number, rate in enumerate(composite.rates):
        w = generate(kernel_spec if number == 0 else {**spec, "seed": composite.seed + 1 + number}, kernel_shape)
        x = graph.relu(graph.conv(x, w, rate))
    return x


def coverage_map(paths: np.ndarray) -> dict[str, Any]:
    """The receptive field as the report draws it: path counts per input pixel (0: not reached)."""
    return {
        "quantity": "paths to the centre output",
        "kind": "coverage",
        "hw": list(paths.shape),
        "block": [1, 1],
        "values": [[float(v) for v in row] for row in paths],
    }
