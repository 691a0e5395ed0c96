"""Nothing lost: a run killed with SIGKILL half-way leaves every finished result readable and
renderable, and the next run keeps the killed run's stream instead of overwriting it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conformance.cli import main as cli_main
from conformance.plugin.run_state import OWNER_FILE, STATE_PREFIX, make_state_dir
from conformance.report import embedded_data
from conformance.results import StreamError, atomic_write_text, read_stream
from tests.projects import child_environment, write_project

CASES = 60
KILL_AFTER = 12  # results on disk before the kill

CASE = """
[[case]]
id = "c{n}"
input = {{ generator = "integers", seed = {n}, low = -3, high = 3, shape = [1, 6, 6, 2] }}
kernel = {{ generator = "integers", seed = 9, low = -2, high = 2, shape = [3, 3, 2, 2] }}
rate = 2
"""


def command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "--expectations=none",
            "--conformance-json=out/results.json", "--conformance-html=out/index.html", *extra]  # fmt: skip


def result_lines(stream: Path) -> int:
    try:
        return stream.read_text().count('"kind": "result"')
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    corpus = {"slow.toml": "".join(CASE.format(n=n) for n in range(CASES))}
    tmp_path = write_project(tmp_path_factory.mktemp("killed"), ["Slow"], corpus)
    (tmp_path / "tmp").mkdir()  # where the run makes its state directory (no cleanup reaches it)
    env = child_environment(PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path / "tmp"))
    log = (tmp_path / "stdout.txt").open("w")
    process = subprocess.Popen(
        command("-n", "2", "-m", "paced"), cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the kill takes the workers too
    )  # fmt: skip
    stream = tmp_path / "out" / "results.jsonl"
    deadline = time.monotonic() + 300
    while result_lines(stream) < KILL_AFTER and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    log.close()
    return tmp_path, (tmp_path / "stdout.txt").read_text()


def test_a_killed_run_leaves_every_finished_result_readable(killed_run: tuple[Path, str]) -> None:
    directory, stdout = killed_run
    assert not (directory / "out" / "results.json").exists()  # it never got to the end
    document = read_stream(directory / "out" / "results.jsonl")
    assert document["interrupted"] is not None and document["environment"]["python"]
    recovered = {record["case"] for record in document["results"]}
    assert KILL_AFTER <= len(recovered) < CASES
    assert {record["outcome"] for record in document["results"]} == {"pass"}
    # Every check the terminal reported as finished is on disk (the stream is written first).
    finished = {
        f"slow/{case}"
        for line in stdout.splitlines()
        if "PASSED" in line
        for case in re.findall(r"::(c\d+)\[", line)  # (a batch of its one check, or the check itself)
    }
    assert finished and finished <= recovered, sorted(finished - recovered)


def test_the_partial_stream_renders_as_a_report(killed_run: tuple[Path, str], tmp_path: Path) -> None:
    directory, _ = killed_run
    stream = directory / "out" / "results.jsonl"
    html_path = tmp_path / "partial.html"
    assert cli_main(["report", str(stream), "-o", str(html_path)]) == 0
    model = embedded_data(html_path.read_text())
    assert sum(len(row["cells"]) for row in model["rows"]) == len(read_stream(stream)["results"])
    assert model["runs"][0]["interrupted"]["stream"] == "results.jsonl"


def test_the_next_run_keeps_the_killed_runs_stream(killed_run: tuple[Path, str], tmp_path: Path) -> None:
    directory = tmp_path / "again"  # a copy: the other tests read the killed run's files as they are
    shutil.copytree(killed_run[0], directory)
    before = (directory / "out" / "results.jsonl").read_bytes()
    abandoned = list((directory / "tmp").glob(f"{STATE_PREFIX}*"))
    assert len(abandoned) == 1, "the killed run's state directory"
    env = child_environment(TMPDIR=str(directory / "tmp"))
    rerun = subprocess.run(
        command("-m", "paced", "-k", "c0"), cwd=directory, env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    kept = list((directory / "out").glob("results.interrupted-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_bytes() == before
    assert "an earlier run was interrupted" in rerun.stdout
    # ...and draws its finished results beside its own report.
    (drawn,) = (directory / "out").glob("results.interrupted-*.html")
    assert sum(len(row["cells"]) for row in embedded_data(drawn.read_text())["rows"]) == before.count(b'"result"')
    assert json.loads((directory / "out" / "results.json").read_text())["summary"]["total"] == 1
    assert read_stream(directory / "out" / "results.jsonl")["interrupted"] is None  # this one finished
    # It removed the killed run's state directory, and its own when it ended.
    assert not list((directory / "tmp").glob(f"{STATE_PREFIX}*"))


def test_only_the_state_directories_of_this_hosts_ended_runs_are_removed(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    host = socket.gethostname()
    owners = {
        "ended": f"{host} {dead_pid}",
        "running": f"{host} {os.getpid()}",
        "elsewhere": f"another-host {dead_pid}",  # (a container sharing /tmp: its pids are its own)
        "garbled": "no pid here",
    }
    for name, owner in owners.items():
        (tmp_path / f"{STATE_PREFIX}{name}").mkdir()
        (tmp_path / f"{STATE_PREFIX}{name}" / OWNER_FILE).write_text(owner)
    (tmp_path / f"{STATE_PREFIX}being-made").mkdir()  # no owner file yet
    made = make_state_dir(tmp_path)
    assert (made / OWNER_FILE).read_text() == f"{host} {os.getpid()}"
    left = sorted(p.name.removeprefix(STATE_PREFIX) for p in tmp_path.glob(f"{STATE_PREFIX}*") if p != made)
    assert left == ["being-made", "elsewhere", "garbled", "running"]


def test_a_torn_last_line_is_dropped_and_a_bad_middle_line_refused(tmp_path: Path) -> None:
    header = json.dumps({"kind": "run", "created": "2026-01-01T00:00:00+00:00", "environment": {}})
    record = {"kind": "result", "case": "s/a", "target": "t", "dtype": "float32", "outcome": "pass"}
    torn = tmp_path / "torn.jsonl"
    torn.write_text(header + "\n" + json.dumps(record) + "\n" + json.dumps(record)[:25])
    document = read_stream(torn)
    assert len(document["results"]) == 1 and document["interrupted"]["torn_lines"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(header + "\n{oops\n" + json.dumps(record) + "\n")
    with pytest.raises(StreamError, match=r"bad\.jsonl:2"):
        read_stream(bad)


def test_final_files_are_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results.json"
    atomic_write_text(target, "old, complete\n")

    class Interrupted(BaseException):  # what a KeyboardInterrupt or a dying process looks like mid-write
        pass

    real_fdopen = os.fdopen

    class HalfWriter:  # the real file, but dying half-way through the text
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.handle = real_fdopen(*args, **kwargs)

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, text: str) -> None:
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            raise Interrupted

    monkeypatch.setattr(os, "fdopen", HalfWriter)
    with pytest.raises(Interrupted):
        atomic_write_text(target, "new " * 1000)
    monkeypatch.undo()
    assert target.read_text() == "old, complete\n"  # never a half-written file under the final name
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # and no temporary left behind
