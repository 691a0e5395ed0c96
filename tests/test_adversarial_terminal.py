"""The terminal is a renderer too: hostile case text and framework messages reach it escaped, so
they cannot clear the screen, recolour it or reorder what the reader sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.projects import child_environment, write_project

ADVERSARIAL = Path(__file__).with_name("adversarial") / "hostile.toml"


def test_hostile_text_reaches_the_terminal_escaped(tmp_path: Path) -> None:
    write_project(tmp_path, ["Hostile"], {"hostile.toml": ADVERSARIAL.read_text(encoding="utf-8")})
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--color=no", "-rA", "-m", "hostile or numpy"]
    command += ["--expectations=none", "--conformance-json=out/results.json", "--conformance-html=none"]
    finished = subprocess.run(
        command, cwd=tmp_path, env=child_environment(), capture_output=True, timeout=300, check=False
    )
    output = finished.stdout.decode("utf-8", "replace") + finished.stderr.decode("utf-8", "replace")
    assert finished.returncode == 1, output[-2000:]
    assert "\x1b" not in output and "\u202e" not in output
    assert "\\u001b[2J" in output  # the invalid id, in its case-file error, shown escaped
    assert "\\u202eright-to-left override" in output  # the framework's message, shown escaped
