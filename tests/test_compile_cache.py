"""The persistent compilation caches (conformance/compile_cache.py): one directory per framework
version, flags and CPU, so nothing a version or flag change could alter is ever loaded from it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance import compile_cache, frameworks, machine
from conformance.frameworks import JAX, KERAS_JAX, TENSORFLOW
from conformance.plugin.run_state import KEPT_CASES
from tests.projects import child_environment

CPU = machine.Cpu.parse("sse4_1 avx avx2 fma avx512f avx512bw avx512vl avx512dq")


def name(framework: frameworks.Framework, cpu: machine.Cpu = CPU, **environ: str) -> str:
    return compile_cache.directory_name(framework, environ, cpu)


def test_the_directory_names_the_versions_in_clear() -> None:
    jax_version, jaxlib_version = frameworks.installed_version(("jax",)), frameworks.installed_version(("jaxlib",))
    assert name(JAX).startswith(f"jax--jax-{jax_version}-jaxlib-{jaxlib_version}--")
    # Keras on JAX: Keras' version, then the backend's packages.
    assert name(KERAS_JAX).startswith(f"keras-jax--keras-jax-{KERAS_JAX.version()}-jax-{jax_version}-")


def test_a_changed_version_flag_or_cpu_names_another_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    first = name(JAX)
    assert name(JAX) == first  # the same install, flags and CPU: the same directory
    assert name(JAX, XLA_FLAGS="--xla_cpu_max_isa=AVX2") != first
    assert name(JAX, OMP_NUM_THREADS="1") != first
    assert name(TENSORFLOW, TF_ENABLE_ONEDNN_OPTS="0") != name(TENSORFLOW, TF_ENABLE_ONEDNN_OPTS="1")
    assert name(JAX, machine.Cpu.parse("sse4_1 avx avx2 fma")) != first
    assert name(JAX, CONFORMANCE_UNRELATED="x") == first  # only what decides compiled code
    real = frameworks.installed_version

    def upgraded(distributions: tuple[str, ...]) -> str | None:
        return "99.0.0" if distributions == ("jaxlib",) else real(distributions)

    monkeypatch.setattr(compile_cache, "installed_version", upgraded)
    assert "jaxlib-99.0.0" in name(JAX) and name(JAX) != first


def test_the_cache_flag_itself_is_not_part_of_the_key(tmp_path: Path) -> None:
    environ = {compile_cache.ROOT_VARIABLE: str(tmp_path), "TF_XLA_FLAGS": "--tf_xla_auto_jit=0"}
    directory = compile_cache.point_tensorflow(TENSORFLOW, environ)
    assert directory is not None and directory.is_dir() and directory.parent == tmp_path
    assert environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={directory}"
    assert compile_cache.point_tensorflow(TENSORFLOW, environ) == directory  # pointed again: the same name
    assert environ["TF_XLA_FLAGS"].count("--tf_xla_persistent_cache_directory") == 1
    assert compile_cache.directory(TENSORFLOW, {}) is None  # no run, no cache
    (tmp_path / "a-file").write_text("")
    unwritable = {compile_cache.ROOT_VARIABLE: str(tmp_path / "a-file")}
    assert compile_cache.directory(TENSORFLOW, unwritable) is None  # cold, not broken


CASE = """
[[case]]
id = "cached"
input = { generator = "normal", seed = 1, shape = [1, 9, 9, 2] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 2] }
rate = 2
padding = "SAME"
dtypes = ["float32", "float64"]
"""


def run_jax(project: Path, cache: Path, in_front: Path | None = None) -> None:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--cases", "cases"]
    command += ["--conformance-target", "jax.conv_general_dilated*-cpu", "--conformance-html", "none"]
    command += ["--conformance-json", "results.json", f"--conformance-cache={cache}"]
    environment = child_environment()
    if in_front is not None:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(in_front), environment.get("PYTHONPATH")]))
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, env=environment)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def entries(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}


def test_a_rerun_loads_what_the_first_compiled_and_another_version_never_does(tmp_path: Path) -> None:
    """The real JAX, run three times on one cache: the second run under another jax version (a
    package metadata record that shadows the installed one, as an upgrade would) compiles every
    program into a directory of its own and leaves the first's alone; the third, the first version
    again, compiles nothing."""
    project = tmp_path / "project"
    (project / "cases").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "cases" / "cached.toml").write_text(CASE)
    cache = tmp_path / "cache"

    run_jax(project, cache)
    (installed,) = [path for path in cache.iterdir() if path.name != KEPT_CASES]  # (and the loaded case file)
    first = entries(installed)
    assert first, "the first run left nothing in the cache"

    upgrade = tmp_path / "upgrade"
    (upgrade / "jax-99.0.0.dist-info").mkdir(parents=True)
    (upgrade / "jax-99.0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: jax\nVersion: 99.0.0\n")
    run_jax(project, cache, in_front=upgrade)
    (upgraded,) = set(cache.iterdir()) - {installed, cache / KEPT_CASES}
    assert upgraded.name.startswith("jax--jax-99.0.0-")
    assert len(entries(upgraded)) == len(first)  # every program compiled again, none read from the first
    assert entries(installed) == first  # and the first directory untouched

    run_jax(project, cache)
    assert entries(installed) == first  # the same install again: everything loaded, nothing compiled
