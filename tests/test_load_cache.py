"""Case files loaded once per content (conformance/cases/load_cache.py): a kept file reads back as
it loads, and anything its loading depends on, changed, loads it again."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance.cases import load_cache, loading
from conformance.cases.model import Case, LoadResult, stored_array
from conformance.plugin.run_state import KEPT_CASES
from tests.projects import child_environment
from tests.test_scheduling import SWEEP as A_SWEEP

SWEEP = (
    A_SWEEP.replace("rate = [1, 2, 3]", "rate = [1, 2]")
    + """
[[case]]
id = "stated"
input = { values = [[[[1.0], [2.0]], [[3.0], [4.0]]]] }
kernel = { values = [[[[1.0]]]] }
expect = { kind = "values", values = [[[[1.0], [2.0]], [[3.0], [4.0]]]] }
"""
)
FILE_KERNEL = '{ file = "weights.npz", key = "k" }'
KERNEL = '{ generator = "normal", seed = 2, shape = [3, 3, 2, 2] }'
FROM_A_FILE = """
[[case]]
id = "model-kernel"
input = { generator = "normal", seed = 1, shape = [1, 6, 6, 2] }
kernel = { file = "weights.npz", key = "k" }
rate = 2
padding = "SAME"
"""


def same(a: LoadResult, b: LoadResult) -> bool:
    """Every field of every case and error alike (a Case compares by identity)."""

    def state(case: Case) -> list[Any]:
        values = [getattr(case, f.name) for f in fields(case)]
        return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]

    return [state(c) for c in a.cases] == [state(c) for c in b.cases] and a.errors == b.errors


class Counted:
    """The loader, counting its loads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loads = 0
        real = loading.load_file

        def load_file(*args: Any) -> LoadResult:
            self.loads += 1
            return real(*args)

        monkeypatch.setattr(load_cache, "load_file", load_file)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counted:
    load_cache._loader_folder.cache_clear()
    return Counted(monkeypatch)


def test_a_kept_file_reads_back_as_it_loads_and_loads_once(tmp_path: Path, counted: Counted) -> None:
    path, cache = tmp_path / "s.toml", tmp_path / "cache"
    path.write_text(SWEEP)
    first = load_cache.load_file_kept(path, tmp_path, cache)
    again = load_cache.load_file_kept(path, tmp_path, cache)
    assert counted.loads == 1 and len(first.cases) == 9
    assert same(again, first) and same(again, loading.load_file(path, tmp_path))
    assert again.cases[0].expected_values is not None
    # Unkept: a load every time.
    load_cache.load_file_kept(path, tmp_path, None)
    load_cache.load_file_kept(path, tmp_path, None)
    assert counted.loads == 3


def test_a_changed_file_or_another_place_loads_again(tmp_path: Path, counted: Counted) -> None:
    path, cache = tmp_path / "s.toml", tmp_path / "cache"
    path.write_text(SWEEP)
    first = load_cache.load_file_kept(path, tmp_path, cache)
    path.write_text(SWEEP.replace("seed = 1", "seed = 2"))
    changed = load_cache.load_file_kept(path, tmp_path, cache)
    assert counted.loads == 2 and changed.cases[-1].input_spec["seed"] != first.cases[-1].input_spec["seed"]
    elsewhere = load_cache.load_file_kept(path, tmp_path.parent, cache)  # (another label)
    assert counted.loads == 3 and elsewhere.cases[0].file == str(path.relative_to(tmp_path.parent))


def test_a_changed_tensor_file_loads_again_and_a_missing_one_is_never_kept(tmp_path: Path, counted: Counted) -> None:
    path, cache, weights = tmp_path / "m.toml", tmp_path / "cache", tmp_path / "weights.npz"
    path.write_text(FROM_A_FILE)
    missing = load_cache.load_file_kept(path, tmp_path, cache)
    assert missing.errors and not list(cache.rglob("*.pickle"))  # (the file may be there next time)
    np.savez(weights, k=np.ones((3, 3, 2, 4)))
    assert len(load_cache.load_file_kept(path, tmp_path, cache).cases) == 1
    assert load_cache.load_file_kept(path, tmp_path, cache).cases[0].kernel_shape == (3, 3, 2, 4)
    assert counted.loads == 2
    np.savez(weights, k=np.ones((3, 3, 2, 5)))
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))  # (a new time, however coarse the clock)
    stored_array.cache_clear()  # (as a new process reads it)
    assert load_cache.load_file_kept(path, tmp_path, cache).cases[0].kernel_shape == (3, 3, 2, 5)
    assert counted.loads == 3


def test_a_torn_entry_or_a_cache_that_cannot_be_written_still_loads(tmp_path: Path, counted: Counted) -> None:
    path, cache = tmp_path / "s.toml", tmp_path / "cache"
    path.write_text(SWEEP)
    load_cache.load_file_kept(path, tmp_path, cache)
    (entry,) = cache.rglob("*.pickle")
    entry.write_bytes(entry.read_bytes()[:100])
    assert len(load_cache.load_file_kept(path, tmp_path, cache).cases) == 9
    assert len(load_cache.load_file_kept(path, tmp_path, cache).cases) == 9
    assert counted.loads == 2  # (loaded again once, and written over whole)
    entry.write_bytes(pickle.dumps(([], "another program's pickle")))
    assert len(load_cache.load_file_kept(path, tmp_path, cache).cases) == 9
    assert counted.loads == 3
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert len(load_cache.load_file_kept(path, tmp_path, blocked / "cache").cases) == 9


def test_an_entry_is_written_whole_or_not_at_all(
    tmp_path: Path, counted: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, cache = tmp_path / "s.toml", tmp_path / "cache"
    path.write_text(SWEEP)

    def full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(load_cache.os, "replace", full)
    assert len(load_cache.load_file_kept(path, tmp_path, cache).cases) == 9
    assert [p.name for p in cache.rglob("*") if p.is_file()] == []


def test_another_loader_keeps_its_own_and_folders_unused_for_long_go(
    tmp_path: Path, counted: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, cache = tmp_path / "s.toml", tmp_path / "cache"
    path.write_text(SWEEP)
    load_cache.load_file_kept(path, tmp_path, cache)
    (kept,) = cache.iterdir()
    stale, recent = cache / "loader-stale", cache / "loader-recent"
    stale.mkdir()
    recent.mkdir()
    old = time.time() - (load_cache.UNUSED_DAYS + 1) * 86400
    os.utime(stale, (old, old))
    monkeypatch.setattr(load_cache, "loader_digest", lambda: "another")
    load_cache._loader_folder.cache_clear()
    load_cache.load_file_kept(path, tmp_path, cache)
    assert counted.loads == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted([kept.name, "loader-another", "loader-recent"])


def test_an_entry_unused_for_long_goes_when_another_is_written(tmp_path: Path, counted: Counted) -> None:
    """Read, an entry counts as used; one left unused (its file changed, or a test's temporary corpus
    gone) goes once the loader writes another."""
    cache, old = tmp_path / "cache", time.time() - (load_cache.UNUSED_DAYS + 1) * 86400
    paths = [tmp_path / f"{name}.toml" for name in ("read", "left", "new")]
    for path in paths[:2]:
        path.write_text(SWEEP)
        load_cache.load_file_kept(path, tmp_path, cache)
    for entry in cache.rglob("*.pickle"):
        os.utime(entry, (old, old))
    load_cache.load_file_kept(paths[0], tmp_path, cache)  # (read: used now)
    load_cache._remove_unused_entries.cache_clear()
    paths[2].write_text(SWEEP)
    load_cache.load_file_kept(paths[2], tmp_path, cache)
    assert counted.loads == 3 and len(list(cache.rglob("*.pickle"))) == 2
    load_cache.load_file_kept(paths[1], tmp_path, cache)
    assert counted.loads == 4  # (the unused one had gone)


def test_the_loader_is_named_by_every_source_file_of_the_package(tmp_path: Path) -> None:
    """A copy of the package is the same loader; with a comment added to any file, another."""
    package = Path(load_cache.__file__).parent.parent
    for name in ("a", "b"):
        shutil.copytree(package, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert load_cache.digest_of(tmp_path / "a") == load_cache.digest_of(package) == load_cache.loader_digest()
    with (tmp_path / "b" / "semantics.py").open("a") as source:
        source.write("# another loader\n")
    assert load_cache.digest_of(tmp_path / "b") != load_cache.digest_of(tmp_path / "a")
    (tmp_path / "a" / "schema" / "cases.schema.json").write_text("{}")
    assert load_cache.digest_of(tmp_path / "a") != load_cache.digest_of(package)


def test_a_case_is_pickled_without_its_geometry_and_shares_one_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        SWEEP.replace("rate = [1, 2]", "rate = [1]").replace('padding = ["VALID", "SAME"]', 'padding = ["VALID"]')
    )
    cases = loading.load_file(path, tmp_path).cases
    for case in cases:
        assert case.geometry is not None  # (computed and cached on the case)
    copies = pickle.loads(pickle.dumps(cases))
    assert all("geometry" not in copy.__dict__ for copy in copies)
    assert all(copy.geometry is case.geometry for copy, case in zip(copies, cases, strict=True))


def run_numpy(project: Path, *options: str) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2", "--cases", "cases"]
    command += ["--conformance-target", "numpy.*", "--conformance-html", "none", "--conformance-json", "results.json"]
    done = subprocess.run([*command, *options], cwd=project, capture_output=True, text=True, env=child_environment())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((project / "results.json").read_text())["results"]


def test_a_run_keeps_what_it_loaded_beside_its_compiled_programs_and_sees_an_edit(tmp_path: Path) -> None:
    """A real run of two workers: the loaded file is kept under the cache root; the case edited, the
    next run checks the edit (its input, another seed) and keeps it too; with `none`, nothing stays."""
    project, cache = tmp_path / "project", tmp_path / "cache"
    (project / "cases").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "cases" / "m.toml").write_text(FROM_A_FILE.replace('{ file = "weights.npz", key = "k" }', KERNEL))
    first = run_numpy(project, f"--conformance-cache={cache}")
    assert {r["case_file"] for r in first} == {"cases/m.toml"}  # (labelled under the root's parent, as ever)
    assert len(list((cache / KEPT_CASES).glob("loader-*/*.pickle"))) == 1
    (project / "cases" / "m.toml").write_text(FROM_A_FILE.replace("seed = 1", "seed = 7").replace(FILE_KERNEL, KERNEL))
    edited = run_numpy(project, f"--conformance-cache={cache}")
    assert {r["input_sha256"] for r in edited}.isdisjoint(r["input_sha256"] for r in first)
    assert len(list((cache / KEPT_CASES).glob("loader-*/*.pickle"))) == 2
    shutil.rmtree(cache)
    run_numpy(project, "--conformance-cache=none")
    assert not cache.exists()
