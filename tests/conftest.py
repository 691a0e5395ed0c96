from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest

from conformance import native

REPO = Path(__file__).resolve().parent.parent

# The interpreters the tests start (about 200: runs of their own, probes, framework children) keep
# the bytecode they compile, as Python does by default (`__pycache__/`, ignored by git). Where
# PYTHONDONTWRITEBYTECODE is set, each would compile the package again, and each pytest process
# parse and rewrite its assertions again (the package is a plugin): about 0.2 s a process.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

# A framework dropped from sys.modules and imported again is corrupted (conformance/native.py): the
# guard turns that into an ImportError naming the cause, and `pytester` below keeps it from happening.
native.guard()


@pytest.fixture
def repo() -> Path:
    return REPO


class _KeepingLoadedPackages:
    """pytester's sys.modules snapshot, restored without dropping what the test imported from
    installed packages or this repository: a native framework imported again in the same process is
    corrupted, and a second copy of the harness's own modules would hold classes that are not the
    first copy's. Modules from the test's own directory (an inner run's conftest and test files)
    are dropped, as pytester intends."""

    # Module file -> its resolved path: each restore looks at every loaded module (thousands with
    # TensorFlow loaded), and resolving a path costs a system call per component.
    _resolved: ClassVar[dict[str, Path]] = {}

    def __init__(self, snapshot: Any, own_directory: Path) -> None:
        self.snapshot, self.own_directory = snapshot, own_directory.resolve()

    def _outside_the_test(self, module: ModuleType | None) -> bool:
        file = getattr(module, "__file__", None)
        if file is None:
            return False
        resolved = self._resolved.get(file)
        if resolved is None:
            resolved = self._resolved[file] = Path(file).resolve()
        return not resolved.is_relative_to(self.own_directory)

    def restore(self) -> None:
        kept = {name: module for name, module in sys.modules.items() if self._outside_the_test(module)}
        self.snapshot.restore()
        for name, module in kept.items():
            sys.modules.setdefault(name, module)


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> Iterator[pytest.Pytester]:
    """pytester, whose snapshots (the fixture's own, and each in-process run's) keep loaded packages.
    (Private attributes of pytest's Pytester: the snapshot it restores at teardown, and the method
    each inline run takes one with.)"""
    own = pytester.path.parent
    take = pytester._Pytester__take_sys_modules_snapshot  # type: ignore[attr-defined]
    pytester._Pytester__take_sys_modules_snapshot = lambda: _KeepingLoadedPackages(take(), own)  # type: ignore[attr-defined]
    pytester._sys_modules_snapshot = _KeepingLoadedPackages(pytester._sys_modules_snapshot, own)  # type: ignore[attr-defined]
    yield pytester
