"""The frameworks under test: one record each, read by everything that needs to know one.

A record says what the framework is called in target ids, records and `-m` markers; which pip
distributions provide it (so its version is known from package metadata, without importing it);
which other packages the environment block should name; and what a process that runs it needs in
its environment (defaults such as TensorFlow's log level). Adapters point at their record
(`Adapter.framework`); markers, version conditions in known divergences, run labels and merged
reports read it from there.

A framework that is not built in (a build under test, the harness's own fakes) registers by
returning adapters that point at its record from `pytest_conformance_adapters`: the plugin calls
`register` for every adapter's framework.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata


@dataclass(frozen=True)
class Framework:
    name: str  # in target ids, records and markers: "torch"
    title: str  # for people: "PyTorch"
    distributions: tuple[str, ...] = ()  # pip names that provide it; the first one installed gives the version
    companions: tuple[str, ...] = ()  # further packages whose versions the environment block records
    # Variables a process that runs this framework starts with unless they are set (workers, children).
    environment_defaults: tuple[tuple[str, str], ...] = ()
    # `-m` markers beside `name` that select it with its kin ("keras" for every Keras backend).
    markers: tuple[str, ...] = ()
    # A front-end's backend: the name of the framework record it computes with, whose version each
    # record carries as `backend_version` (Keras 3 on "jax").
    backend: str | None = None

    def version(self) -> str | None:
        """The installed version, from package metadata (no import, so even a skip knows it)."""
        return installed_version(self.distributions)

    @property
    def packages(self) -> tuple[str, ...]:
        return (*self.distributions, *self.companions)

    @property
    def all_markers(self) -> tuple[str, ...]:
        return (self.name, *self.markers)

    def backend_version(self) -> str | None:
        return version_of(self.backend) if self.backend else None

    def missing(self) -> str | None:
        """Why this framework cannot run here, from package metadata alone (no import): its own
        distribution or its backend's is not installed."""
        if self.distributions and self.version() is None:
            return f"{self.title} is not installed (pip: {' or '.join(self.distributions)})"
        if self.backend and self.backend_version() is None:
            return f"{self.title} needs {self.backend}, which is not installed"
        return None


@cache
def installed_version(distributions: tuple[str, ...]) -> str | None:
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


NUMPY = Framework("numpy", "NumPy", ("numpy",), companions=("ml_dtypes",))
TORCH = Framework("torch", "PyTorch", ("torch",))
TENSORFLOW = Framework(
    "tensorflow",
    "TensorFlow",
    ("tensorflow", "tensorflow-cpu"),
    # TensorFlow's C++ start-up chatter is noise in test output; and each process that runs it (a
    # worker, a oneDNN or Keras child) would otherwise claim the whole GPU at start. A user's own
    # setting wins.
    environment_defaults=(("TF_CPP_MIN_LOG_LEVEL", "2"), ("TF_FORCE_GPU_ALLOW_GROWTH", "true")),
)
JAX = Framework(
    "jax",
    "JAX",
    ("jax",),
    companions=("jaxlib",),
    # Several processes of one run share the GPU: none takes 75% of its memory up front.
    environment_defaults=(("XLA_PYTHON_CLIENT_PREALLOCATE", "false"),),
)

ONNXRUNTIME = Framework("onnxruntime", "ONNX Runtime", ("onnxruntime", "onnxruntime-gpu"), companions=("onnx",))


def _keras_on(backend: Framework) -> Framework:
    """Keras 3 on one backend: a framework of its own (its backend is fixed at import, its bugs are
    per backend), versioned by Keras, with the backend's version beside it; `-m keras` selects all."""
    return Framework(
        f"keras-{backend.name}",
        f"Keras 3 on {backend.title}",
        ("keras",),
        companions=backend.packages,
        environment_defaults=backend.environment_defaults,
        markers=("keras",),
        backend=backend.name,
    )


KERAS_TENSORFLOW, KERAS_JAX, KERAS_TORCH = (_keras_on(backend) for backend in (TENSORFLOW, JAX, TORCH))

_registry: dict[str, Framework] = {}


def register(framework: Framework) -> Framework:
    """Make a framework known by name; registering the same record again is a no-op."""
    known = _registry.setdefault(framework.name, framework)
    if known != framework:
        raise ValueError(f"two different frameworks are both named {framework.name!r}: {known} and {framework}")
    return known


def known() -> tuple[Framework, ...]:
    return tuple(_registry.values())


def get(name: str) -> Framework | None:
    return _registry.get(name)


def version_of(name: str) -> str | None:
    """A known framework's installed version; an unknown name is read as a distribution name."""
    framework = get(name)
    return framework.version() if framework is not None else installed_version((name,))


def set_defaults(framework: Framework) -> None:
    """Fill in the framework's environment defaults in this process (before it imports the framework)."""
    for variable, value in framework.environment_defaults:
        os.environ.setdefault(variable, value)


def versions_line(versions: Mapping[str, str]) -> str:
    """'torch 2.13.0 tensorflow 2.21.0 jax 0.10.2' (NumPy, present everywhere, is left out)."""
    return " ".join(f"{name} {version}" for name, version in versions.items() if name != NUMPY.name)


def installed_versions(frameworks: Iterable[Framework]) -> dict[str, str]:
    return {f.name: version for f in frameworks if (version := f.version()) is not None}


for _built_in in (NUMPY, TORCH, TENSORFLOW, JAX, ONNXRUNTIME, KERAS_TENSORFLOW, KERAS_JAX, KERAS_TORCH):
    register(_built_in)
