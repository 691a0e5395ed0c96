"""Which worker runs an item (conformance/plugin/scheduling.py): the harness's tests spread over
every worker's share, work stealing unless a --dist is named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from conformance.plugin import scheduling
from tests.projects import REPO, child_environment


def fake(nodeid: str) -> pytest.Item:
    return cast(pytest.Item, SimpleNamespace(nodeid=nodeid))


def test_each_share_starts_with_its_modules_and_is_filled_with_checks() -> None:
    checks = [fake(f"cases/c.toml::check{i}") for i in range(20)]
    a = [fake(f"tests/test_a.py::test_{i}") for i in range(3)]
    b = [fake(f"tests/test_b.py::test_{i}") for i in range(2)]
    c = [fake("tests/test_c.py::test_0")]
    items = [*a, *b, *c, *checks]
    scheduling.spread(items, lambda item: item.nodeid.startswith("cases/"), workers=2)
    # 26 items: worksteal hands out 13 and 13. The largest module to the first share, the next two to
    # the second (counts 3 and 3), each share then filled with checks in their order.
    assert items == [*a, *checks[:10], *b, *c, *checks[10:]]


def test_nothing_moves_without_two_workers_or_without_both_kinds() -> None:
    checks = [fake(f"cases/c.toml::check{i}") for i in range(4)]
    tests = [fake("tests/test_a.py::test_0")]
    for items, workers in (([*tests, *checks], 1), (list(checks), 2), (list(tests), 2)):
        before = list(items)
        scheduling.spread(items, lambda item: item.nodeid.startswith("cases/"), workers=workers)
        assert items == before


def config(dist: str, args: tuple[str, ...] = (), addopts: tuple[str, ...] = ()) -> Any:
    return SimpleNamespace(
        option=SimpleNamespace(dist=dist),
        invocation_params=SimpleNamespace(args=args),
        getini=lambda name: list(addopts),
    )


def test_work_stealing_unless_a_scheduler_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    chosen = config("load", ("-n", "auto"))
    assert scheduling.prefer_work_stealing(chosen) and chosen.option.dist == "worksteal"
    named_ones = (config("load", ("--dist", "load")), config("load", ("--dist=load",)), config("load", addopts=("-d",)))
    for named in named_ones:
        assert not scheduling.prefer_work_stealing(named) and named.option.dist == "load"
    assert not scheduling.prefer_work_stealing(config("loadfile")) and not scheduling.prefer_work_stealing(config("no"))
    monkeypatch.setenv("PYTEST_ADDOPTS", "--dist load")
    assert not scheduling.prefer_work_stealing(config("load"))


SWEEP = """
[[sweep]]
id = "s"
seed = 1
size = [9, 8]
channels = 2
out_channels = 2
kernel_size = 3
[sweep.axes]
stride = [1, 2]
rate = [1, 2, 3]
padding = ["VALID", "SAME"]
"""
HARNESS_TEST = """
import os, time
from pathlib import Path

def test_{n}_{i}():
    time.sleep(0.3)
    Path("ran").mkdir(exist_ok=True)
    Path("ran", "{n}_{i}").write_text(os.environ["PYTEST_XDIST_WORKER"])
"""


ORDER_HOOK = """
import os
from pathlib import Path

def pytest_collection_finish(session):
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
        Path("order").write_text("\\n".join(item.nodeid for item in session.items))
"""


def test_the_harness_tests_of_a_run_reach_every_worker(tmp_path: Path) -> None:
    """A real `pytest -n 2` of a project with two test modules and a corpus: the order a worker
    collected (the plugin's, after every other hook's) starts each of the two shares worksteal
    hands out with one module (in collection order both sat in the first share), and each module
    ran whole on one worker, the two on different workers."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(ORDER_HOOK)
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "s.toml").write_text(SWEEP)
    for n in ("a", "b"):
        (tmp_path / f"test_{n}.py").write_text("".join(HARNESS_TEST.format(n=n, i=i) for i in range(3)))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", "test_a.py", "test_b.py"]
    command += ["cases", "--conformance-target", "numpy.*", "--conformance-html", "none"]
    command += ["--conformance-json", "results.json", "--expectations", "none"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=child_environment(), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    order = (tmp_path / "order").read_text().splitlines()
    half = len(order) // 2
    assert [i for i, nodeid in enumerate(order) if nodeid.startswith("test_a.py")] == [0, 1, 2]
    assert [i for i, nodeid in enumerate(order) if nodeid.startswith("test_b.py")] == [half, half + 1, half + 2]
    workers = {n: {(tmp_path / "ran" / f"{n}_{i}").read_text() for i in range(3)} for n in ("a", "b")}
    assert len(workers["a"]) == len(workers["b"]) == 1 and workers["a"] != workers["b"], workers


def test_collecting_the_harness_tests_loads_no_framework() -> None:
    """Every xdist worker collects the harness's tests, and so does each worker that replaces one: a
    test module that imports a framework at collection (pytest.importorskip("keras") did: TensorFlow
    and JAX with it) costs each of them seconds and hundreds of MiB before its first check."""
    probe = (
        "import sys, pytest\n"
        "status = pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests'])\n"
        "loaded = sorted(m for m in ('torch', 'tensorflow', 'jax', 'keras', 'onnxruntime') if m in sys.modules)\n"
        "print(int(status), loaded)\n"
    )
    env = child_environment()
    finished = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    last_line = finished.stdout.strip().splitlines()[-1]
    assert last_line == "0 []", finished.stdout[-2000:] + finished.stderr[-2000:]
