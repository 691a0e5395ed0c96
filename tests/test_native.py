"""A framework whose native library a process loaded is never imported there a second time.

A worker of this suite once reported torch `error`s (`SystemError: ...() method: bad call flags`)
after a harness test ran pytest in-process: pytester restores sys.modules when such a test ends,
dropping torch if the test was the first to import it, and the next `import torch` ran torch's
`__init__` over its already-initialised extension. The plugin's guard turns that into an
ImportError that says so; the suite's own pytester (tests/conftest.py) keeps loaded packages.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.projects import REPO, child_environment

pytest_plugins = ["pytester"]

DROP_AND_IMPORT_AGAIN = """
import sys
from conformance import native
native.guard()
before = dict(sys.modules)
import torch
import torch.nn.functional
sys.modules.clear()
sys.modules.update(before)  # what pytester's snapshot does after a test that imported torch first
try:
    import torch
except ImportError as exc:
    print("refused:", exc)
else:
    print("imported again")
"""


def test_a_dropped_framework_is_refused_not_imported_again() -> None:
    pytest.importorskip("torch")
    finished = subprocess.run(
        [sys.executable, "-c", DROP_AND_IMPORT_AGAIN], cwd=REPO, env=child_environment(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "refused: torch was loaded in this process and then removed from sys.modules" in finished.stdout


def test_a_framework_that_never_loaded_may_still_be_imported() -> None:
    from conformance import native

    guard = native.ReimportGuard()
    assert guard.find_spec("onnx") is None or "onnx" in sys.modules  # nothing refused that never loaded here
    assert guard.find_spec("some_package_of_the_user") is None


def test_in_process_runs_keep_what_they_loaded_from_installed_packages(pytester: pytest.Pytester) -> None:
    """An inline run's snapshot (and the fixture's) drop the run's own modules, not installed ones."""
    installed = "xml.dom.pulldom"  # (standard library, imported by nothing else here)
    if installed in sys.modules:
        pytest.skip(f"{installed} is already loaded in this process")
    pytester.makepyfile(own_helper="VALUE = 1")
    pytester.makepyfile(
        test_inner=f"import own_helper\nimport {installed}\n\ndef test_it():\n    assert own_helper.VALUE"
    )
    pytester.syspathinsert()
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert installed in sys.modules, "an installed module imported by the inner run is kept"
    assert "own_helper" not in sys.modules, "the inner run's own modules are dropped, as pytester intends"
