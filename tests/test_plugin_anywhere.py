"""The plugin from anywhere: loaded by its entry point, inert where nobody asked for it, `--cases`
from any directory in both spellings; and what the terminal says at the end of a run.

Every run here is a real `python -m pytest` in a subprocess, with the package installed as CI
installs it (the `pytest11` entry point, no conftest naming the plugin).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.projects import child_environment

REPO = Path(__file__).resolve().parent.parent

UNRELATED_TESTS = """
import pytest


def test_passes():
    assert 1 + 1 == 2


def test_fails():
    assert 1 + 1 == 3


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


@pytest.mark.xfail(reason="known")
def test_xfails():
    raise ValueError


@pytest.mark.parametrize("n", [1, 2])
def test_parametrized(n):
    assert n
"""

CORPUS = """
[[case]]
id = "rate2"
input = { generator = "normal", seed = 1, shape = [1, 7, 7, 2] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 2] }
rate = 2
padding = "SAME"
dtypes = ["float32", "float64"]
"""


def pytest_run(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=no", *args]
    return subprocess.run(command, cwd=directory, capture_output=True, text=True, env=child_environment(), timeout=600)


def outcomes(output: str) -> list[str]:
    """What pytest said about each test and the final count, without timings."""
    lines = [line for line in output.splitlines() if re.match(r"(PASSED|FAILED|SKIPPED|XFAIL|XPASS|ERROR) ", line)]
    final = re.sub(r" in [\d.]+s.*", "", output.strip().splitlines()[-1])
    return [*sorted(lines), final]


@pytest.fixture
def unrelated(tmp_path: Path) -> Path:
    project = tmp_path / "unrelated"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    (project / "test_unrelated.py").write_text(UNRELATED_TESTS)
    # A name the suite registers as a marker when it is active: unregistered here, an error under --strict-markers.
    (project / "test_marker.py").write_text("import pytest\n\n\n@pytest.mark.numpy\ndef test_marked():\n    pass\n")
    (project / "cases").mkdir()  # a folder of that name, but no corpus in it: TOML of another kind
    (project / "cases" / "fixture.toml").write_text('[[user]]\nname = "a"\n[settings]\nlevel = 3\n')
    return project


def test_the_entry_point_loads_the_plugin_wherever_the_package_is_installed(unrelated: Path) -> None:
    result = pytest_run(unrelated, "--help")
    assert "--cases=PATH" in result.stdout and "--conformance-json" in result.stdout
    version = pytest_run(unrelated, "--version", "--version")
    listed = r"dilated-conv-conformance-[\d.]+ at .*conformance/plugin/__init__.py"
    assert re.search(listed, version.stdout + version.stderr)


def test_an_unrelated_project_runs_the_same_with_the_plugin_installed(unrelated: Path) -> None:
    runs = {}
    for name, switch in (("with", []), ("without", ["-p", "no:conformance.plugin"])):
        result = pytest_run(unrelated, "-rA", "--continue-on-collection-errors", *switch)
        collected = re.sub(r" in [\d.]+s", "", pytest_run(unrelated, "--collect-only", "-q", *switch).stdout)
        markers = pytest_run(unrelated, "--markers", *switch).stdout
        runs[name] = (result.returncode, outcomes(result.stdout), collected, markers)
    assert runs["with"] == runs["without"]
    returncode, lines, collected, _ = runs["with"]
    assert returncode == 1 and lines[-1].startswith("=") and "2 failed" not in lines[-1]
    assert lines[-1].strip("= ") == "1 failed, 3 passed, 1 skipped, 1 xfailed, 1 error", lines
    assert "'numpy' not found in `markers`" in collected  # (with the suite active, it would be a marker)
    assert not (unrelated / "reports").exists(), "an inert plugin writes no results"


def test_cases_anywhere_from_any_directory_in_both_spellings(tmp_path: Path) -> None:
    corpus = tmp_path / "elsewhere" / "my corpus"
    corpus.mkdir(parents=True)
    (corpus / "mine.toml").write_text(CORPUS)
    project = tmp_path / "my_project"
    project.mkdir()
    for spelling in (["--cases", str(corpus)], [f"--cases={corpus}"]):
        out = tmp_path / "out" / ("-".join(spelling)[:8] + ".json")
        result = pytest_run(project, *spelling, "-m", "numpy", f"--conformance-json={out}", "--conformance-html=none")
        assert result.returncode == 0, result.stdout + result.stderr
        document = json.loads(out.read_text())
        assert {(r["case"], r["dtype"], r["outcome"]) for r in document["results"]} == {
            ("mine/rate2", "float32", "pass"),
            ("mine/rate2", "float64", "pass"),
        }
        # Run from a project without cases/, the suite's own known divergences apply.
        assert {e["id"] for e in document["expectations"]} >= {"tf-onednn-no-valid-output"}


def test_checks_that_m_rules_out_while_collecting_count_as_deselected(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "mine.toml").write_text(CORPUS)
    base = ["--cases", str(corpus), "--conformance-html=none", "--conformance-gpu=probe", "--expectations=none"]
    every = pytest_run(tmp_path, *base, "--collect-only", "-q", "-p", "no:xdist", "--conformance-batch=off").stdout
    total = int(re.search(r"(\d+) tests? collected", every).group(1))  # type: ignore[union-attr]  (checks)
    assert total > 10
    # Checks, not items, in both modes: a batch's checks that -m rules out count one by one.
    for workers, batch in (([], "off"), ([], "case"), (["-n", "2"], "off"), (["-n", "2"], "case")):
        json_option = f"--conformance-json={tmp_path / 'r.json'}"
        result = pytest_run(tmp_path, *base, json_option, "-m", "numpy", f"--conformance-batch={batch}", *workers)
        counts = dict((name, int(n)) for n, name in re.findall(r"(\d+) (\w+)", result.stdout.splitlines()[-1]))
        assert counts.get("passed") == 2, result.stdout[-2000:]
        assert counts.get("deselected") == total - 2, (workers, counts, total)


SPECIAL = """
[[case]]
id = "inf-input"
# +Inf and -Inf in one rate-2 window: the reference's sum is NaN there, on purpose
input = { generator = "normal", seed = 1, shape = [1, 6, 6, 1], set = [
  { at = [0, 2, 2, 0], value = inf }, { at = [0, 2, 4, 0], value = -inf },
] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 1, 1] }
rate = 2
padding = "SAME"
dtypes = ["float32", "float16"]

[[case]]
id = "stride2-rate2"
input = { generator = "normal", seed = 3, shape = [1, 9, 9, 1] }
kernel = { generator = "normal", seed = 4, shape = [3, 3, 1, 1] }
rate = 2
stride = 2
padding = "VALID"
"""


def test_the_terminal_summary_answers_at_a_glance(tmp_path: Path) -> None:
    from tests.projects import write_project

    (tmp_path / "project").mkdir()
    project = write_project(tmp_path / "project", ["StrideRateBug", "Warns"], {"mine.toml": CORPUS + SPECIAL})
    # The numpy target, two fakes (one wrong, one that warns), and a GPU target that cannot run here.
    result = pytest_run(project, "-m", "numpy or faulty or warning or (torch and gpu)", "-n", "2")
    summary = result.stdout[result.stdout.index("- conformance -") :]
    lines = summary.splitlines()
    assert len(lines) < 40, summary
    # One table row per framework, operation and rank that ran; the GPU target collapsed into one line.
    assert re.search(r"^numpy conv 2-D\s+1\s+5\s+5\s", summary, re.M), summary
    assert re.search(r"^faulty conv 2-D\s+\d+\s+\d+.*", summary, re.M)
    assert re.search(r"ran nothing here: \d+ target\(s\), \d+ checks: no GPU on this machine", summary)
    # The failing checks by cause: a count, the cause, one example with its worst element.
    assert re.search(r"^\s+1  faulty forward, mismatch \(float32\): values beyond the error bound$", summary, re.M)
    example = [line for line in lines if line.strip().startswith("e.g. mine/") and "faulty.stride_rate_bug" in line]
    assert example and "worst at" in example[0], summary
    # The framework warning once, naming its target and how many checks saw it; the harness's own
    # floating-point warnings (Inf through the reference, the bound, im2col) are not warnings at all.
    assert summary.count("fake framework notice") == 1
    assert re.search(r"UserWarning at .*fault_adapters.py:\d+ \(\d+ check\(s\) of warning\.warns-cpu\)", summary)
    assert "RuntimeWarning" not in result.stdout and "warnings summary" not in result.stdout
    assert "SKIPPED [" not in result.stdout and "XFAIL " not in result.stdout
    # The user can still ask pytest for its per-item lines.
    assert "SKIPPED [" in pytest_run(project, "-m", "torch and gpu", "-rs").stdout


def test_the_suite_asks_pytest_for_no_per_item_summary_lines() -> None:
    """-ra in addopts would print a SKIPPED/XFAIL line per check (about 1,400 in the default run)
    under the summary; the conformance summary says the same once per reason."""
    import tomllib

    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert not re.search(r"(^|\s)-r", addopts), addopts


def test_the_spaced_spelling_says_when_pytest_took_the_path_for_the_rootdir(tmp_path: Path) -> None:
    """pytest settles the rootdir before plugins load (pytest-dev/pytest#8846): `--cases PATH` then
    costs the project's configuration file, and the run says so (and how to keep it)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "mine.toml").write_text(CORPUS)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    common = ["-m", "numpy", "--conformance-html=none", f"--conformance-json={tmp_path / 'r.json'}"]
    spaced = pytest_run(project, "--cases", str(corpus), *common)
    joined = pytest_run(project, f"--cases={corpus}", *common)
    assert spaced.returncode == joined.returncode == 0
    assert f"write --cases={corpus} to keep those" in spaced.stdout and "pytest-dev/pytest#8846" in spaced.stdout
    assert "pytest-dev/pytest#8846" not in joined.stdout and f"rootdir: {project}" in joined.stdout


def test_a_spaced_path_the_run_writes_outside_its_directory_is_refused(tmp_path: Path) -> None:
    """`--conformance-cache PATH` (with a space) outside the directory pytest runs in: once PATH
    exists pytest takes it for a test path and loses the project's configuration (pytest-dev/pytest#8846),
    and the run creates it, so a worker started later would collect other tests. Refused with the
    spelling that works, whether PATH exists yet or not; `=` runs, and so does a path inside."""
    project = tmp_path / "project"
    (project / "cases").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\ntestpaths = cases\n")
    (project / "cases" / "mine.toml").write_text(CORPUS)
    (project / "test_other.py").write_text("def test_other():\n    pass\n")
    cache = tmp_path / "cache"
    for exists in (False, True):
        if exists:
            cache.mkdir()
        refused = pytest_run(project, "--collect-only", "-q", "--conformance-cache", str(cache))
        assert refused.returncode == 4, refused.stdout + refused.stderr
        assert f"write --conformance-cache={cache}" in refused.stderr and "pytest-dev/pytest#8846" in refused.stderr
    for spelling in ([f"--conformance-cache={cache}"], ["--conformance-json", "out/results.json"]):
        collected = pytest_run(project, "--collect-only", "-q", *spelling)
        assert collected.returncode == 0, collected.stdout + collected.stderr
        assert "mine.toml" in collected.stdout and "test_other" not in collected.stdout


def test_cases_runs_only_that_corpus_from_a_checkout_unless_the_tests_are_named(tmp_path: Path) -> None:
    """In a project whose testpaths name its tests and cases/, `--cases mine/` collects mine/ only;
    naming tests/ as well collects both, and no `--cases` collects the testpaths as before."""
    project = tmp_path / "checkout"
    (project / "tests").mkdir(parents=True)
    (project / "cases").mkdir()
    (project / "pytest.ini").write_text("[pytest]\ntestpaths = tests cases\n")
    (project / "tests" / "test_harness.py").write_text("def test_harness():\n    pass\n")
    (project / "cases" / "shipped.toml").write_text(CORPUS)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "mine.toml").write_text(CORPUS)

    def collected(*args: str) -> set[str]:
        result = pytest_run(project, "--collect-only", "-q", "-m", "numpy or not numpy", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        return {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}

    assert collected(f"--cases={tmp_path / 'mine'}") == {"mine.toml"}
    assert collected("tests", f"--cases={tmp_path / 'mine'}") == {"tests/test_harness.py", "mine.toml"}
    assert collected() == {"tests/test_harness.py", "cases/shipped.toml"}


def test_a_named_corpus_of_a_tier_the_run_leaves_out_says_how_to_run_it(tmp_path: Path) -> None:
    """`from-model --tier extended` writes such a file: run without the tier, nothing runs, and the
    run says which cases were left out and the switch that runs them, even under -q."""
    corpus = tmp_path / "model.toml"
    corpus.write_text('tier = "extended"\n' + CORPUS)
    common = [
        f"--cases={corpus}",
        "-m",
        "numpy",
        "--conformance-html=none",
        f"--conformance-json={tmp_path / 'r.json'}",
    ]
    quiet = pytest_run(tmp_path, *common, "-q")
    notice = (
        "conformance: not run, of a tier this run leaves out: 1 case(s) of tier extended (--conformance-tier extended)"
    )
    assert quiet.returncode == 5 and notice in quiet.stdout, quiet.stdout
    loud = pytest_run(tmp_path, *common)
    assert notice in loud.stdout.split("collected")[0], loud.stdout  # (in the header too)
    ran = pytest_run(tmp_path, *common, "--conformance-tier", "extended", "-q")
    assert ran.returncode == 0 and "not run, of a tier" not in ran.stdout, ran.stdout


def test_cases_of_other_ranks_reach_the_targets_of_their_rank_only(tmp_path: Path) -> None:
    """Rank is data: 1-D and 3-D cases load and run where a target takes their rank (the NumPy
    target and the reference are rank-free), and the 2-D APIs are never paired with them; a caller
    that pairs them anyway gets `unsupported` with the reason."""
    from conformance.adapters import Target
    from conformance.adapters.pytorch import TorchConv
    from conformance.cases import load_file
    from conformance.runner import run_check
    from tests.test_cases import OTHER_RANKS

    (tmp_path / "ranks.toml").write_text(OTHER_RANKS)
    collected = pytest_run(
        tmp_path, "--cases=ranks.toml", "--collect-only", "-q", "-m", "numpy or not numpy", "--conformance-batch=off"
    )
    items = [line for line in collected.stdout.splitlines() if "::" in line]
    by_case = {name: [i for i in items if f"::{name}[" in i] for name in ("causal-1d", "volume-3d", "transposed-3d")}
    assert all(by_case.values()), collected.stdout
    # Each case reaches its rank's APIs, never another rank's (the 2-D ones included)...
    other_rank = {"causal-1d": ("2d", "2D", "3d", "3D"), "volume-3d": ("1d", "1D", "2d", "2D")}
    other_rank["transposed-3d"] = other_rank["volume-3d"]
    for name, found in by_case.items():
        assert not [i for i in found if any(mark in i.split("[")[1] for mark in other_rank[name])], found
    # ...and the rank-free targets take every rank; a transposed case only the transposed APIs.
    assert any("numpy.im2col-cpu" in i for i in by_case["causal-1d"]) and any("torch.conv1d-cpu" in i for i in items)
    assert any("jax.conv_general_dilated-cpu" in i for i in by_case["volume-3d"])
    assert all("transpose" in i or "Transpose" in i or "lhs-dilation" in i for i in by_case["transposed-3d"])
    run = pytest_run(tmp_path, "--cases=ranks.toml", "-m", "numpy", "-n", "2", "--conformance-html", "none")
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout
    causal = load_file(tmp_path / "ranks.toml", tmp_path).cases[0]
    record = run_check(causal, Target(TorchConv(), "cpu", "strict"), "float32")
    assert record["outcome"] == "unsupported" and "takes 2 spatial axes; this case has 1" in record["message"]
