"""The CI workflow (.github/workflows/conformance.yml): valid for GitHub Actions, free of the
findings of a workflow linter, its shell steps clean, and its matrix the tox environments.

The linters are real tools: check-jsonschema with SchemaStore's workflow schema (bundled), zizmor
(offline), shellcheck. Where one is missing the test skips, unless CONFORMANCE_REQUIRE_LINTERS=1
(set by .ci/run) makes that a failure.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.projects import REPO

WORKFLOW = REPO / ".github" / "workflows" / "conformance.yml"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CONFORMANCE_REQUIRE_LINTERS") == "1":
            pytest.fail(f"{name} is required here (CONFORMANCE_REQUIRE_LINTERS=1) but not installed")
        pytest.skip(f"{name} is not installed")
    return found


def _workflow() -> dict[str, Any]:
    yaml = pytest.importorskip("ruamel.yaml")  # (check-jsonschema's YAML parser)
    loaded: dict[str, Any] = yaml.YAML(typ="safe").load(WORKFLOW.read_text())
    return loaded


def test_the_workflow_matches_github_s_schema() -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing() -> None:
    result = subprocess.run([_tool("zizmor"), "--offline", str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_run_step_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck = _tool("shellcheck")
    scripts = [
        (f"{job}: {step.get('name', 'step')}", step["run"])
        for job, spec in _workflow()["jobs"].items()
        for step in spec.get("steps", [])
        if "run" in step
    ]
    assert len(scripts) >= 5
    for name, script in scripts:
        # An expression is replaced before the shell sees it: stand a plain word in for it.
        path = tmp_path / "step.sh"
        path.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + re.sub(r"\$\{\{.*?\}\}", "EXPRESSION", script))
        result = subprocess.run([shellcheck, "--severity=style", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


def test_the_matrix_is_every_framework_release_of_tox_and_the_shard_count_agrees() -> None:
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    releases = sorted(s.removeprefix("testenv:") for s in tox.sections() if s.startswith("testenv:fw-"))
    workflow = _workflow()
    matrix = workflow["jobs"]["shard"]["strategy"]["matrix"]
    assert sorted(matrix["environment"]) == releases
    assert int(workflow["env"]["SHARDS"]) == len(matrix["shard"]) and matrix["shard"] == list(
        range(1, len(matrix["shard"]) + 1)
    )
    # Every machine profile the suite defines runs as a job of its own, through its tox environment.
    from conformance.profiles import PROFILES

    profiles = workflow["jobs"]["profile"]["strategy"]["matrix"]["profile"]
    assert sorted(profiles) == sorted(PROFILES)
    assert sorted(s.removeprefix("testenv:profile-") for s in tox.sections() if s.startswith("testenv:profile-")) == (
        sorted(PROFILES)
    )
    # The merge job waits for every shard, profile and the GPU job, and runs even when a shard found failures.
    merge = workflow["jobs"]["merge"]
    assert set(merge["needs"]) == {"shard", "profile", "gpu"} and "always()" in merge["if"]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=root, capture_output=True, text=True)


def test_the_package_keeps_its_layers() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_adapter_importing_the_runner_breaks_the_layers(tmp_path: Path) -> None:
    """The contracts can fail: a copy of the package whose NumPy adapter imports the runner (which
    imports the adapters: a circle) breaks every one of them."""
    shutil.copytree(REPO / "conformance", tmp_path / "conformance", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    adapter = tmp_path / "conformance" / "adapters" / "numpy.py"
    adapter.write_text(adapter.read_text() + "\nfrom conformance import runner  # noqa: E402\n")
    result = subprocess.run(
        [_tool("lint-imports"), "--no-cache"], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode != 0
    assert "3 broken" in result.stdout, result.stdout
    assert "conformance.adapters.numpy -> conformance.runner" in result.stdout


def test_ci_runs_the_readme_s_test_command_and_a_bare_pytest_runs_the_cases_alone() -> None:
    """`pytest -n auto` is the conformance run (pyproject's testpaths: cases/ alone), what a maintainer
    waits for; the project's test command, the harness's tests with it, is the one the README names
    for CI and the one .ci/run runs."""
    import tomllib

    readme = (REPO / "README.md").read_text()
    named = re.search(r"The project's test command.*?```sh\n(.+?)\n```", readme, re.DOTALL)
    assert named is not None, "the README names no test command"
    command = named.group(1).strip()
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    ci = [line for line in lines if re.match(r"(python3? -m )?pytest\b", line)]
    assert ci == [command]
    assert {"tests", "cases"} <= set(command.split())
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(REPO / "tox.ini")
    assert "{posargs:tests cases}" in tox["testenv"]["commands"]  # tox -e py311: the same paths
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["tool"]["pytest"]["ini_options"]["testpaths"] == ["cases"]
