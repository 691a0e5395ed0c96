"""Every non-conformant record of a red run on another machine class is explained by the known
divergences, judged with the facts of the machine that made it.

tests/data/evidence/ holds such runs as they were recorded (a `run` line with the machine's CPU
flags and framework flags, then each record that was not pass, skip, unsupported, xfail or
expected-error). Each record is replayed through cases/expectations.toml (`conformance.replay`):
a failure must be excused by an entry whose conditions hold there, and a conformant check that an
entry took in (xpass) must no longer be taken in by a strict one. An entry put back as it was
before that machine was understood (narrower: a failure unexcused; wider: a conformant check
taken in) fails this test.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from conformance import expectations, replay
from conformance.cases import Case, load_paths
from conformance.check_records import HARNESS_FAILED
from tests.projects import REPO

EVIDENCE = REPO / "tests" / "data" / "evidence"
# The files as recorded: replaying an edited copy would prove nothing.
RECORDED = {
    "2026-12-04-avx512-onednn-default.jsonl": "21e1a644024fc9971d58b6f22cd1afe519499ff800e69500198cb9810663c3fd",
}
# Records that were the harness's own failure, not a framework's: each with what removed its cause.
HARNESS_FAULTS = {
    (case, target, "float32"): (
        "an oracle whose baseline (tf.nn.conv2d under oneDNN, batch 0) returned the wrong shape was compared "
        "element by element; judging._against_misshapen_baseline judges it now "
        "(test_modes_oracles.py::test_an_oracle_whose_baseline_has_the_wrong_shape_is_judged_not_a_harness_error)"
    )
    for case, targets in (
        ("zero_sized/batch0-rate2", ("atrous_conv2d@equals-conv2d", "conv2d@nchw", "conv2d@zero-inserted")),
        ("zero_sized/batch0-rate2-same-stride2", ("conv2d@explicit-pads", "conv2d@nchw", "conv2d@zero-inserted")),
    )
    for target in (f"tensorflow.{name}-cpu" for name in targets)
}


@pytest.fixture(scope="module")
def corpus() -> dict[str, Case]:
    return {case.qualified_id: case for case in load_paths([REPO / "cases"]).cases}


def _unexplained(
    path: Path, entries: list[expectations.Expectation], corpus: dict[str, Case]
) -> tuple[int, Counter[str]]:
    where, records = replay.read_evidence(path.read_text().splitlines())
    left: Counter[str] = Counter()
    for record in records:
        if (record["message"] or "").startswith(HARNESS_FAILED):
            if (record["case"], record["target"], record["dtype"]) not in HARNESS_FAULTS:
                left[f"{record['target']} {record['dtype']}: the harness's own failure, not yet explained"] += 1
            continue
        judged = replay.rejudge(record, entries, where, corpus.get(record["case"]))
        if replay.failing(judged):
            matched = (judged.get("expectation") or {}).get("id", "no entry")
            left[f"{judged['target']} {judged['dtype']} {judged['outcome']} ({matched})"] += 1
    return len(records), left


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_every_record_of_the_run_is_explained(name: str, corpus: dict[str, Case]) -> None:
    path = EVIDENCE / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == RECORDED[name], "the evidence must stay as recorded"
    known = expectations.load(REPO / "cases" / "expectations.toml")
    assert not known.errors
    count, left = _unexplained(path, known.entries, corpus)
    assert count > 800
    faults = [line for line in path.read_text().splitlines() if HARNESS_FAILED in line]
    assert len(faults) == len(HARNESS_FAULTS), "each harness fault listed is one of the file's"
    assert not left, "\n".join(f"{n} x {what}" for what, n in left.most_common())


def test_an_entry_put_back_as_it_was_leaves_records_unexplained(tmp_path: Path, corpus: dict[str, Case]) -> None:
    """The entries as they stood before the AVX-512 run was understood: conditioned on oneDNN being on
    (not on the dtype oneDNN computes), and without a dtype or runtime condition (channels-first)."""
    text = (REPO / "cases" / "expectations.toml").read_text()
    as_it_was = {
        "narrower": (
            '"tensorflow.conv1d@grad-*-cpu",\n  "tensorflow.conv1d@hvp-*-cpu"]\n# TensorFlow\'s own kernel refuses',
            'runtime = { onednn_dtype = false }\nversions = { tensorflow = ">=2.0" }',
            'runtime = { onednn_enabled = false }\nversions = { tensorflow = ">=2.0" }',
        ),
        "wider": (
            '"keras-tensorflow.Conv1D@channels-first-cpu"]\nruntime',
            '-cpu"]\nruntime = { onednn_dtype = false }',
            '-cpu"]',
        ),
    }
    path = EVIDENCE / sorted(RECORDED)[0]
    for anchor, now, then in as_it_was.values():
        start = text.index(anchor)
        end = text.index("[[divergence]]", start)
        assert text.count(now, start, end) == 1, now
        edited = text[:start] + text[start:end].replace(now, then) + text[end:]
        (tmp_path / "expectations.toml").write_text(edited)
        known = expectations.load(tmp_path / "expectations.toml")
        assert not known.errors
        _, left = _unexplained(path, known.entries, corpus)
        assert left, f"{then!r} should leave records of {path.name} unexplained"


def test_replay_on_the_command_line_says_what_would_still_fail(capsys: pytest.CaptureFixture[str]) -> None:
    from conformance import cli

    path = EVIDENCE / sorted(RECORDED)[0]
    status = cli.main(["replay", str(path), "--expectations", str(REPO / "cases" / "expectations.toml")])
    out = capsys.readouterr().out
    # 818 records, less the harness's own failures (488 errors of 494), judged on the file's machine.
    assert f"{path}: 812 record(s), machine avx2 avx512f" in out and "avx512_bf16; no amx" in out
    assert "as recorded: 488 error" in out and "0 record(s) would fail a run" in out
    # The harness's own failures are not framework behaviour: counted apart, and they keep the status 1.
    assert f"{len(HARNESS_FAULTS)} record(s) were the harness's own failure" in out and status == 1


def test_replay_of_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    from conformance import cli

    missing = tmp_path / "never-written.json"
    with pytest.raises(SystemExit) as stopped:
        cli.main(["replay", str(missing)])
    assert str(missing) in str(stopped.value.code) and "cannot read it" in str(stopped.value.code)
