"""`--conformance-history` and `python -m conformance history` on real runs of the plugin (the NumPy
target, in subprocesses): a clean run, then one whose NumPy adapter is broken for one case; the
second run's report says since when that case fails and where it passed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance import history
from conformance.cli import main as cli_main
from conformance.report import embedded_data
from tests.test_diff_merge import CORPUS, REGRESSING_CONFTEST


def run_with_history(directory: Path, name: str, store: Path, *, broken: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BREAK_VICTIM" and not k.startswith("PYTEST_")}
    if broken:
        env["BREAK_VICTIM"] = "1"
    command = [sys.executable, "-m", "pytest", "-p", "conformance.plugin", "-p", "no:cacheprovider", "-m", "numpy"]
    command += ["--cases", "mycases", "--conformance-json", f"{name}.json", "--conformance-html", f"{name}.html"]
    command += [f"--conformance-history={store}"]  # (=: outside the run's directory, pytest-dev/pytest#8846)
    return subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("history")
    (directory / "mycases").mkdir()
    (directory / "mycases" / "mine.toml").write_text(CORPUS)
    (directory / "conftest.py").write_text(REGRESSING_CONFTEST)
    (directory / "pytest.ini").write_text("[pytest]\n")
    store = directory / "history.sqlite"
    clean = run_with_history(directory, "clean", store, broken=False)
    assert clean.returncode == 0, clean.stdout[-2000:]
    assert f"conformance: added to the history {store} (1 run(s))" in clean.stdout
    time.sleep(1)  # (a run's time is to the second, and two of these runs can fit in one)
    broken = run_with_history(directory, "broken", store, broken=True)
    assert broken.returncode == 1, broken.stdout[-2000:]  # the broken case fails the run
    assert "(2 run(s))" in broken.stdout
    return directory


def test_the_report_says_since_when_a_failing_check_fails(project: Path) -> None:
    data = embedded_data((project / "broken.html").read_text(encoding="utf-8"))
    section = data["history"]
    assert section["runs"] == 2 and section["failing"] == 2  # the victim, float32 and float64
    checks = {(c["case"], c["dtype"]): c for c in section["checks"]}
    assert set(checks) == {("mine/victim", "float32"), ("mine/victim", "float64")}
    victim = checks[("mine/victim", "float64")]
    assert victim["target"] == "numpy.im2col-cpu" and victim["runs"] == 2
    assert victim["passed_in"] == [np_version()]
    assert victim["last_passing"]["created"] < victim["failing_since"]["created"]
    # The clean run's report had nothing failing: no section to draw.
    assert embedded_data((project / "clean.html").read_text(encoding="utf-8"))["history"]["checks"] == []


def np_version() -> str:
    import numpy as np

    return np.__version__


def test_history_show_and_flaky_on_the_command_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = project / "history.sqlite"
    assert cli_main(["history", "show", "mine/victim", "--failing", "--dtype", "float64", "--history", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "mine/victim [numpy.im2col-cpu, float64]" in shown
    assert "failing since" in shown and "last passed" in shown and "1 check(s) failing now over 2 run(s)" in shown
    assert "bystander" not in shown
    # Adding a run's file again adds nothing.
    assert cli_main(["history", "add", str(project / "broken.json"), "--history", str(store)]) == 0
    assert "already in the history" in capsys.readouterr().out
    # Both runs had the same NumPy on the same machine: a check whose outcome changed between them is
    # flaky as far as the history can tell (it cannot see the patched adapter); the bystander is not.
    assert cli_main(["history", "flaky", "--history", str(store)]) == 1
    flaky = capsys.readouterr().out
    assert "mine/victim [numpy.im2col-cpu, float64]" in flaky and "outcome differs" in flaky
    assert "bystander" not in flaky and "2 flaky check(s)" in flaky
    assert cli_main(["history", "flaky", "mine/bystander", "--history", str(store)]) == 0


def test_a_history_the_run_cannot_use_costs_only_the_reports_section(project: Path, tmp_path: Path) -> None:
    not_sqlite = tmp_path / "notes.sqlite"
    not_sqlite.write_text("not a database\n")
    ran = run_with_history(project, "other", not_sqlite, broken=False)
    assert ran.returncode == 0
    assert "conformance: not added to a history:" in ran.stdout and str(not_sqlite) in ran.stdout
    assert (project / "other.json").exists()
    assert embedded_data((project / "other.html").read_text(encoding="utf-8"))["history"] is None


def test_report_on_the_command_line_takes_a_history(project: Path, tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    store = project / "history.sqlite"
    assert cli_main(["report", str(project / "broken.json"), "-o", str(page), "--history", str(store)]) == 0
    section = embedded_data(page.read_text(encoding="utf-8"))["history"]
    assert {c["case"] for c in section["checks"]} == {"mine/victim"}
    with pytest.raises(SystemExit, match="not a history file"):
        (tmp_path / "bad.sqlite").write_text("x" * 200)
        cli_main(["report", str(project / "broken.json"), "-o", str(page), "--history", str(tmp_path / "bad.sqlite")])
    assert history.SCHEMA_VERSION == 1
