"""The malformed case-file corpus (tests/malformed/, manifest tests/malformed_expected.toml).

Each file holds one mistake a user could make. The loader must name the file, the case, the field
and the line, say what to fix without the harness's internals, and still load every valid case
in the same file; a real pytest run over the whole corpus must run those valid cases and report
every mistake."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conformance.cases import load_file
from tests.projects import child_environment

CORPUS = Path(__file__).with_name("malformed")
MANIFEST = tomllib.loads(Path(__file__).with_name("malformed_expected.toml").read_text())["file"]
# Words that mean the user is reading the harness's or the schema library's insides.
INTERNALS = (
    "Traceback", "jsonschema", "$defs", "$ref", "oneOf", "anyOf", "allOf", "additionalProperties",
    "KeyError", "TypeError", "ValueError", "AttributeError", "valid under", "{'required'",
)  # fmt: skip


def test_the_corpus_is_large_and_the_manifest_covers_it_exactly() -> None:
    on_disk = sorted(p.name for p in CORPUS.glob("*.toml"))
    assert len(on_disk) >= 40
    assert sorted(entry["name"] for entry in MANIFEST) == on_disk


@pytest.mark.parametrize("entry", MANIFEST, ids=[entry["name"] for entry in MANIFEST])
def test_each_mistake_is_named_precisely(entry: dict[str, Any]) -> None:
    loaded = load_file(CORPUS / entry["name"], CORPUS)
    assert len(loaded.errors) == entry.get("errors", 1), [str(e) for e in loaded.errors]
    error = loaded.errors[0]
    assert error.file == entry["name"]
    assert (error.case, error.field, error.line) == (entry.get("case"), entry.get("field"), entry.get("line")), str(
        error
    )
    for words in entry["message"]:
        assert words.lower() in error.message.lower(), str(error)
    for word in INTERNALS:
        assert word.lower() not in error.message.lower(), str(error)
    assert [case.id for case in loaded.cases] == entry["valid"]


def test_a_run_over_the_whole_corpus_reports_every_mistake_and_runs_every_valid_case(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "-m", "numpy"]
    command += ["--cases", str(CORPUS), f"--conformance-json={out}", "--conformance-html", "none"]
    command += ["--expectations", "none", "-q", "--tb=short"]
    env = child_environment()
    finished = subprocess.run(
        command, cwd=CORPUS.parent.parent, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert finished.returncode == 1, finished.stdout[-3000:]  # failures reported, no internal error
    document = json.loads(out.read_text())
    assert len(document["case_errors"]) == sum(entry.get("errors", 1) for entry in MANIFEST)
    ran = {record["case"] for record in document["results"]}
    valid = {f"{Path(entry['name']).stem}/{case}" for entry in MANIFEST for case in entry["valid"]}
    assert valid <= ran, sorted(valid - ran)
    assert {record["outcome"] for record in document["results"]} <= {"pass", "expected-error"}
    assert "Traceback" not in finished.stdout and "conformance/cases/" not in finished.stdout
