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
AVX512 = "2026-12-04-avx512-onednn-default.jsonl"  # Zen 4: AVX512-VNNI/BF16, no AMX
AMX = "2026-12-06-amx-onednn-float16.jsonl"  # a Xeon with AVX512-FP16 and AMX-BF16: oneDNN takes float16 too
AMX_CAPPED = "2026-12-06-amx-avx2-onednn-on.jsonl"  # the same Xeon under the avx2-onednn-on profile
# The same Xeon on the NaN-tap case with bfloat16 added: uncapped (AMX), and capped to a Zen 4's oneDNN level.
AMX_BFLOAT16 = "2026-12-06-amx-bfloat16-nan-tap.jsonl"
AMX_AS_ZEN4 = "2026-12-06-amx-capped-avx512-bf16-nan-tap.jsonl"
# The files as recorded (replaying an edited copy would prove nothing), and how many records each holds.
RECORDED = {
    AVX512: ("21e1a644024fc9971d58b6f22cd1afe519499ff800e69500198cb9810663c3fd", 818),
    AMX: ("f56d2ce17273e630693073c13e28e0b4efa07ad1a4563d6967c75f6a6fc5b506", 636),
    AMX_CAPPED: ("ea95cad9ec5cb0b2ef430e2481eeb4e05ae3c98747cad4675aebbf8ba9676b02", 589),
    AMX_BFLOAT16: ("754c7b0f6538d209b8f7e7213a8fe9032d1c8e13ffcc5ded5629f09cbc39d529", 14),
    AMX_AS_ZEN4: ("7d089f9ad433ff8ee9eebb3a73ce479e82f572a3dc408e55fe20df6d010c737a", 37),
}
# Records of the AVX-512 run that were the harness's own failure, not a framework's: each with what removed its cause.
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
    digest, records = RECORDED[name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, "the evidence must stay as recorded"
    known = expectations.load(REPO / "cases" / "expectations.toml")
    assert not known.errors
    count, left = _unexplained(path, known.entries, corpus)
    assert count == records
    faults = [line for line in path.read_text().splitlines() if HARNESS_FAILED in line]
    assert len(faults) == (len(HARNESS_FAULTS) if name == AVX512 else 0), "each harness fault listed is the file's"
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
    for anchor, now, then in as_it_was.values():
        left = _unexplained_with(text, anchor, now, then, EVIDENCE / AVX512, tmp_path, corpus)
        assert left, f"{then!r} should leave records of {AVX512} unexplained"


def test_the_amx_machine_needs_each_level_and_dtype_its_entries_name(tmp_path: Path, corpus: dict[str, Case]) -> None:
    """On the AMX machine torch and TensorFlow hand oneDNN float16, which runs at AVX512_CORE_AMX, and bfloat16,
    which AMX tiles compute differently: an entry narrower or wider than the levels and dtypes its records
    need leaves them unexplained (a failure unexcused, or a conformant check taken in)."""
    text = (REPO / "cases" / "expectations.toml").read_text()
    torch16, torch_bf16 = 'id = "torch-onednn-float16-padded-nan-tap"', 'id = "torch-onednn-bfloat16-padded-nan-tap"'
    tf32, tf16 = 'id = "tf-onednn-padded-nan-tap"', 'id = "tf-onednn-float16-padded-nan-tap"'
    tf_bf16 = 'id = "tf-onednn-bfloat16-padded-nan-tap"'
    fp16_and_amx = '["AVX512_CORE_FP16", "AVX512_CORE_AMX"]'
    edited = {
        # Narrower: a failure of that machine left unexcused.
        (AMX, "torch.conv2d-cpu float16 mismatch"): (torch16, 'dtypes = ["float16"]', 'dtypes = ["bfloat16"]'),
        (AMX, "keras-torch.Conv2D-cpu float16 mismatch"): (torch16, fp16_and_amx, '["AVX512_CORE_FP16"]'),
        (AMX, "tensorflow.conv2d-cpu float16 mismatch"): (tf16, fp16_and_amx, '["AVX512_CORE_FP16"]'),
        (AMX, "tensorflow.conv2d-cpu float32 mismatch"): (
            tf32,
            '"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",',
            '"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX_FP16",',
        ),
        # As it was before: bfloat16 alone, the only half type TensorFlow handed oneDNN on the AVX-512 machine.
        (AMX_CAPPED, "tensorflow.conv2d-cpu float16 error"): (
            'id = "tf-onednn-half-below-its-isa"',
            'dtypes = ["bfloat16", "float16"]',
            'dtypes = ["bfloat16"]',
        ),
        (AMX_CAPPED, "keras-tensorflow.Conv2D-cpu float16 error"): (
            'id = "keras-tf-onednn-half-below-its-isa"',
            'dtypes = ["bfloat16", "float16"]',
            'dtypes = ["bfloat16"]',
        ),
        # bfloat16 skips the padding on oneDNN's AVX-512 levels (a Zen 4's among them) but not on AMX tiles.
        (AMX_AS_ZEN4, "torch.conv2d-cpu bfloat16 mismatch"): (
            torch_bf16,
            '"AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16"]',
            '"AVX512_CORE_VNNI", "AVX512_CORE_FP16"]',
        ),
        (AMX_AS_ZEN4, "tensorflow.conv2d-cpu bfloat16 mismatch"): (
            tf_bf16,
            '"AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16"]',
            '"AVX512_CORE_VNNI", "AVX512_CORE_FP16"]',
        ),
        # Wider: a conformant check of that machine taken in.
        (AMX_BFLOAT16, "tensorflow.conv2d-cpu bfloat16 xpass"): (tf32, 'dtypes = ["float32"]  #', "#"),  # every dtype
        (AMX_BFLOAT16, "torch.conv2d-cpu bfloat16 xpass"): (
            torch_bf16,
            '"AVX512_CORE_FP16"] }',
            '"AVX512_CORE_FP16", "AVX512_CORE_AMX"] }',
        ),
        # float16 handed to a oneDNN that cannot run it aborts: an oracle against that baseline is no skip.
        (AMX_AS_ZEN4, "tensorflow.atrous_conv2d@equals-conv2d-cpu float16 xpass"): (
            tf16,
            fp16_and_amx,
            '["AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX"]',
        ),
    }
    for (name, failure), (anchor, now, then) in edited.items():
        left = _unexplained_with(text, anchor, now, then, EVIDENCE / name, tmp_path, corpus)
        assert any(what.startswith(failure) for what in left), f"{then!r}: {sorted(left)}"


def _unexplained_with(
    text: str, anchor: str, now: str, then: str, path: Path, tmp_path: Path, corpus: dict[str, Case]
) -> Counter[str]:
    """The records of `path` left unexplained when the entry at `anchor` says `then` where it says `now`."""
    start = text.index(anchor)
    end = text.index("[[divergence]]", start)
    assert text.count(now, start, end) == 1, now
    edited = text[:start] + text[start:end].replace(now, then) + text[end:]
    (tmp_path / "expectations.toml").write_text(edited)
    known = expectations.load(tmp_path / "expectations.toml")
    assert not known.errors
    return _unexplained(path, known.entries, corpus)[1]


def test_replay_on_the_command_line_says_what_would_still_fail(capsys: pytest.CaptureFixture[str]) -> None:
    from conformance import cli

    path = EVIDENCE / AVX512
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
