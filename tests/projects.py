"""Throwaway pytest projects for the harness's tests that need a real run in its own processes:
a directory with its own rootdir, case files and a conftest that adds test-only adapters."""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def write_project(directory: Path, adapters: list[str], case_files: dict[str, str]) -> Path:
    """`adapters` are class names from tests/fault_adapters.py; `case_files` go under cases/."""
    classes = ", ".join(adapters)
    (directory / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
        f"from tests.fault_adapters import {classes}\n\n"
        'pytest_plugins = ["conformance.plugin"]\n\n\n'
        "def pytest_conformance_adapters(config):\n"
        f"    return [{', '.join(f'{name}()' for name in adapters)}]\n"
    )
    (directory / "pytest.ini").write_text("[pytest]\n")  # its own rootdir, not this repository's
    (directory / "cases").mkdir(exist_ok=True)
    for name, text in case_files.items():
        (directory / "cases" / name).write_text(text)
    return directory


def child_environment(**extra: str) -> dict[str, str]:
    """This environment without the outer pytest's and xdist's variables (a child must not think it
    is a worker). The runs started with it leave out Hypothesis' pytest plugin: importing Hypothesis
    costs each of their pytest processes 0.65 s, and none of them runs a property-based test (the
    fuzzer imports Hypothesis itself)."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return inherited | {"PYTEST_ADDOPTS": "-p no:hypothesispytest"} | extra


def not_installed(module: str) -> pytest.MarkDecorator:
    """A module's skip mark where `module` is not installed, found without importing it: an import
    at collection (pytest.importorskip) would load the framework into every process that collects
    the tests, each xdist worker and each worker that replaces one (Keras brings TensorFlow and
    JAX: about 4 s and 0.6 GiB each time)."""
    return pytest.mark.skipif(find_spec(module) is None, reason=f"{module} is not installed")
