"""A framework whose native library a process has loaded is never imported a second time there.

Removing `torch` from `sys.modules` (pytest's pytester restores `sys.modules` after every test
that uses it, dropping what the test imported) and importing it again runs torch's `__init__`
over an extension module that is already initialised: its method tables come back garbled
(`SystemError: <garbage>() method: bad call flags`, `module functions cannot set METH_CLASS or
METH_STATIC`), and every later check in that process fails as if torch were broken. TensorFlow,
JAX and ONNX Runtime load native libraries the same way.

`guard()` puts a finder first on `sys.meta_path` that turns such a second import into an
ImportError that names the cause, so the checks report it as the harness's error, never as the
framework's. Inside the suite's own tests the modules are kept instead (tests/conftest.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

# Packages with native libraries that cannot be initialised twice in one process.
NATIVE = frozenset({"torch", "tensorflow", "jax", "jaxlib", "keras", "onnxruntime", "onnx", "ml_dtypes"})


class ReimportGuard:
    """A meta-path finder that only refuses: it finds nothing, so every other import is untouched."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()

    def _note_loaded(self) -> None:
        self.loaded.update(name for name in NATIVE if name in sys.modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        self._note_loaded()  # (any import passes here: a package that loaded is noted by the next one)
        top = fullname.partition(".")[0]
        if top in self.loaded and top not in sys.modules:
            raise ImportError(
                f"{top} was loaded in this process and then removed from sys.modules (pytest's pytester "
                f"restores sys.modules after a test that uses it): importing it again would run it over its "
                f"already-initialised native library and corrupt it; import {top} before such a test, or "
                "run in a fresh process",
                name=fullname,
            )
        return None


_guard = ReimportGuard()


def guard() -> ReimportGuard:
    """Install the guard in this process (once); returns it."""
    if _guard not in sys.meta_path:
        sys.meta_path.insert(0, _guard)
    _guard._note_loaded()
    return _guard
