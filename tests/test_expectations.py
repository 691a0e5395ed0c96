"""Known divergences: loading with precise errors, matching conditions, xfail/xpass/stale."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from conformance import expectations
from conformance.cli import main as cli_main

ENTRIES = """
[[divergence]]
id = "tf-depthwise"
cases = ["depthwise/stride*"]
targets = ["tensorflow.depthwise_conv2d-*"]
versions = { tensorflow = ">=2.4,<3" }
outcomes = ["mismatch", "shape"]
reason = "strides and rate together"
link = "https://github.com/tensorflow/tensorflow/issues/100237"

[[divergence]]
id = "onednn-empty"
cases = ["*"]
expect = "no-valid-output"
targets = ["tensorflow.conv2d-cpu"]
dtypes = ["float32"]
env = { TF_ENABLE_ONEDNN_OPTS = "1" }
reason = "garbage instead of empty"
link = "https://github.com/tensorflow/tensorflow/issues/64396"

[[divergence]]
id = "gpu-only"
cases = ["basics/*"]
targets = ["torch.conv2d-gpu"]
device = "gpu"
env = { SOME_FLAG = false }
reason = "only on a GPU"
link = "https://example.org/gpu"
"""


def record(**fields: Any) -> dict[str, Any]:
    base = {
        "case": "depthwise/stride2-rate2-valid",
        "target": "tensorflow.depthwise_conv2d-cpu",
        "framework": "tensorflow",
        "framework_version": "2.21.0",
        "device": "cpu",
        "precision": "strict",
        "dtype": "float32",
        "expect": "reference",
        "outcome": "mismatch",
        "message": "3 of 16 elements beyond the bound",
    }
    return {**base, **fields}


@pytest.fixture
def entries(tmp_path: Path) -> list[expectations.Expectation]:
    path = tmp_path / "expectations.toml"
    path.write_text(ENTRIES)
    loaded = expectations.load(path)
    assert loaded.errors == []
    return loaded.entries


def test_a_matching_failure_is_xfail_and_keeps_what_was_observed(entries: list[expectations.Expectation]) -> None:
    result = expectations.apply(record(), entries, environ={})
    assert result["outcome"] == "xfail"
    assert result["observed_outcome"] == "mismatch"
    assert result["expectation"]["id"] == "tf-depthwise"
    assert result["expectation"]["link"].endswith("/100237")


def test_apply_takes_the_entry_matches_takes_whatever_it_kept_for_earlier_cases(
    entries: list[expectations.Expectation],
) -> None:
    """`apply` keeps, per case, the entries whose case globs take it (a batch's checks share them):
    over more cases than it keeps, twice over, and for every target, dtype and `expect`, it takes
    the first entry that `matches` takes, and none where none does."""
    environ = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    cases = [f"depthwise/stride{n}" for n in range(2 * expectations._TAKING_CASE_KEPT)]
    cases += ["depthwise/rate2", "basics/a"]
    taken = []
    for case in cases * 2:
        for target in ("tensorflow.depthwise_conv2d-cpu", "tensorflow.conv2d-cpu", "torch.conv2d-gpu"):
            for dtype in ("float32", "float64"):
                for expect in ("reference", "no-valid-output"):
                    checked = record(case=case, target=target, dtype=dtype, expect=expect)
                    wanted = next((e.id for e in entries if e.matches(checked, environ)), None)
                    applied = expectations.apply(dict(checked), entries, environ)
                    assert applied.get("expectation", {}).get("id") == wanted, checked
                    taken.append(wanted)
    assert {"tf-depthwise", "onednn-empty", None} <= set(taken)


def test_a_matching_pass_is_xpass_and_says_what_to_do(entries: list[expectations.Expectation]) -> None:
    result = expectations.apply(record(outcome="pass", message=""), entries, environ={})
    assert result["outcome"] == "xpass"
    assert "matched this conformant check (pass): narrow the condition that took it in" in result["message"]
    # It names each condition as this check met it (here: the version range and the case globs).
    assert "`versions` tensorflow <3,>=2.4 contains 2.21.0" in result["message"]
    assert "`cases` match depthwise/stride2-rate2-valid" in result["message"]


def test_a_different_failure_is_not_excused(entries: list[expectations.Expectation]) -> None:
    result = expectations.apply(record(outcome="error"), entries, environ={})
    assert result["outcome"] == "error"
    assert "not excused" in result["message"]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"case": "basics/stride2-rate2-same"}, "case glob"),
        ({"target": "tensorflow.conv2d-cpu"}, "target glob"),
        ({"framework_version": "2.3.1"}, "below the version range"),
        ({"framework_version": "3.0.0"}, "above the version range"),
    ],
)
def test_conditions_that_do_not_hold_leave_the_result_alone(
    entries: list[expectations.Expectation], fields: dict[str, Any], why: str
) -> None:
    result = expectations.apply(record(**fields), entries, environ={})
    assert result["outcome"] == "mismatch", why
    assert "expectation" not in result, why


def test_environment_dtype_and_expect_conditions(entries: list[expectations.Expectation]) -> None:
    empty = record(case="documents/tf-4x4-rate2-valid", target="tensorflow.conv2d-cpu", expect="no-valid-output")
    empty["outcome"] = "shape"
    assert expectations.apply(dict(empty), entries, environ={})["outcome"] == "shape"  # oneDNN not forced on
    assert expectations.apply(dict(empty), entries, environ={"TF_ENABLE_ONEDNN_OPTS": "0"})["outcome"] == "shape"
    assert expectations.apply(dict(empty), entries, environ={"TF_ENABLE_ONEDNN_OPTS": "1"})["outcome"] == "xfail"
    other_dtype = {**empty, "dtype": "bfloat16"}
    assert expectations.apply(other_dtype, entries, environ={"TF_ENABLE_ONEDNN_OPTS": "1"})["outcome"] == "shape"
    values_case = {**empty, "expect": "reference"}
    assert expectations.apply(values_case, entries, environ={"TF_ENABLE_ONEDNN_OPTS": "1"})["outcome"] == "shape"


def test_an_unset_condition_and_the_device(entries: list[expectations.Expectation]) -> None:
    gpu = record(case="basics/x", target="torch.conv2d-gpu", framework="torch", device="gpu")
    assert expectations.apply(dict(gpu), entries, environ={})["outcome"] == "xfail"
    assert expectations.apply(dict(gpu), entries, environ={"SOME_FLAG": "1"})["outcome"] == "mismatch"


def by_id_entry(entries: list[expectations.Expectation], entry_id: str) -> expectations.Expectation:
    return next(e for e in entries if e.id == entry_id)


def test_statuses_reproduced_fixed_not_evaluated_and_stale(entries: list[expectations.Expectation]) -> None:
    records = [
        expectations.apply(record(), entries, environ={}),
        expectations.apply(record(case="depthwise/stride2-rate3-same", outcome="pass"), entries, environ={}),
        expectations.apply(
            record(case="basics/x", target="torch.conv2d-gpu", framework="torch", device="gpu", outcome="skip"),
            entries,
            environ={},
        ),
    ]
    case_dtypes = {r["case"]: (r["dtype"],) for r in records}
    targets = tuple(r["target"] for r in records)
    corpus = expectations.Corpus(case_dtypes, targets)
    by_id = {s["id"]: s for s in expectations.statuses(entries, records, corpus)}
    assert by_id["tf-depthwise"]["status"] == "partly fixed"
    assert (by_id["tf-depthwise"]["xfail"], by_id["tf-depthwise"]["xpass"]) == (1, 1)
    assert by_id["gpu-only"]["status"] == "not evaluated"
    assert by_id["onednn-empty"]["status"] == "stale", "its globs match no check of the corpus"

    # The same entry when the corpus has its checks but this run deselected them, or its env did not hold.
    # (every target of the corpus takes every case of it: the corpus is cases x targets)
    corpus_targets = (*targets, "tensorflow.conv2d-cpu")
    corpus = expectations.Corpus({**case_dtypes, "documents/tf-4x4-rate2-valid": ("float32",)}, corpus_targets)
    onednn = by_id_entry(entries, "onednn-empty")
    assert corpus.has_checks_of(onednn)
    assert not expectations.Corpus({"documents/tf-4x4-rate2-valid": ("float64",)}, corpus_targets).has_checks_of(onednn)
    assert not expectations.Corpus(corpus.case_dtypes, targets).has_checks_of(onednn)
    by_id = {s["id"]: s for s in expectations.statuses(entries, records, corpus)}
    assert by_id["onednn-empty"]["status"] == "not in this run"
    oned = record(case="documents/tf-4x4-rate2-valid", target="tensorflow.conv2d-cpu", expect="no-valid-output")
    ran = [*records, expectations.apply(oned, entries, environ={})]  # TF_ENABLE_ONEDNN_OPTS unset
    by_id = {s["id"]: s for s in expectations.statuses(entries, ran, corpus)}
    assert by_id["onednn-empty"]["status"] == "not applicable here"

    counts = dict.fromkeys(expectations.COUNTS, 0)
    assert expectations.status_from_counts({**counts, "xpass": 2}) == "fixed"
    assert expectations.status_from_counts({**counts, "xfail": 3, "not_run": 1}) == "reproduced"
    assert expectations.status_from_counts({**counts, "other": 1}) == "changed"


def test_invalid_entries_are_named_and_the_valid_ones_still_load(tmp_path: Path) -> None:
    path = tmp_path / "expectations.toml"
    path.write_text(
        ENTRIES
        + """
[[divergence]]
id = "typo"
case = ["x/*"]
targets = ["*"]
reason = "r"
link = "https://example.org"

[[divergence]]
id = "bad-range"
cases = ["*"]
targets = ["*"]
versions = { torch = "newer than 2" }
reason = "r"
link = "https://example.org"

[[divergence]]
id = "no-link"
cases = ["*"]
targets = ["*"]
reason = "r"
link = "see the forum"
"""
    )
    loaded = expectations.load(path, "cases/expectations.toml")
    assert [e.id for e in loaded.entries] == ["tf-depthwise", "onednn-empty", "gpu-only"]
    text = "\n".join(str(e) for e in loaded.errors)
    assert "case 'typo': field 'case': unknown key 'case' (did you mean 'cases'?)" in text
    assert "case 'bad-range': field 'versions': not a PEP 440 version range" in text
    assert "case 'no-link': field 'link'" in text
    assert all(e.file == "cases/expectations.toml" and e.line for e in loaded.errors)


def test_unreadable_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "expectations.toml"
    path.write_text("[[divergence]\nid = ")
    loaded = expectations.load(path)
    assert loaded.entries == [] and len(loaded.errors) == 1
    assert "cannot read known divergences" in loaded.errors[0].message


def test_globs_that_match_nothing_are_reported(entries: list[expectations.Expectation]) -> None:
    errors = expectations.unmatched_globs(entries, ["depthwise/stride2-rate2-valid"], ["tensorflow.conv2d-cpu"])
    text = [str(e) for e in errors]
    assert any("'tensorflow.depthwise_conv2d-*' matches no known target" in t for t in text)
    assert any("'basics/*' matches no known case" in t for t in text)
    assert not any("'depthwise/stride*'" in t for t in text)


def test_the_shipped_file_is_valid_and_every_glob_matches(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    assert cli_main(["validate"]) == 0


def test_validate_fails_on_a_glob_that_matches_no_case(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(repo)
    path = tmp_path / "expectations.toml"
    path.write_text(ENTRIES.replace("depthwise/stride*", "depthwise/strde*"))
    assert cli_main(["validate", "--expectations", str(path)]) == 1
    assert "'depthwise/strde*' matches no known case" in capsys.readouterr().err


def test_where_matches_by_geometry(tmp_path: Path) -> None:
    """An entry that names the triggering geometry excuses every case of that geometry, and only those."""
    path = tmp_path / "expectations.toml"
    path.write_text(
        '[[divergence]]\nid = "stride-and-rate"\ncases = ["*"]\ntargets = ["fake.*"]\n'
        'where = ["max(stride_h, stride_w) > 1 and max(rate_h, rate_w) > 1"]\noutcomes = ["shape"]\n'
        'reason = "r"\nlink = "https://example.org/1"\n'
    )
    loaded = expectations.load(path)
    assert not loaded.errors

    def record(rate: list[int], stride: list[int]) -> dict:
        return {
            "case": "any/case", "target": "fake.conv-cpu", "dtype": "float32", "outcome": "shape",
            "framework": "fake", "framework_version": None, "device": "cpu", "precision": "strict",
            "expect": "reference", "input_shape": [1, 9, 9, 1], "kernel_shape": [3, 3, 1, 1],
            "rate": rate, "stride": stride, "padding": "SAME", "groups": 1, "message": "m",
        }  # fmt: skip

    for rate, stride, excused in (([2, 1], [2, 2], True), ([1, 1], [2, 2], False), ([3, 3], [1, 1], False)):
        result = record(rate, stride)
        expectations.apply(result, loaded.entries, {})
        assert (result["outcome"] == "xfail") is excused, (rate, stride)
    path.write_text(path.read_text().replace("max(stride_h", "import(stride_h"))
    (error,) = expectations.load(path).errors
    assert error.field == "where" and "not an expression" in error.message


RUNTIME_AND_WHERE = """
[[divergence]]
id = "onednn-geometry"
cases = ["*"]
targets = ["tensorflow.conv2d-cpu"]
dtypes = ["float32"]
runtime = { onednn_enabled = true }
where = ["not valid_output and padded_h - effective_h + 2 * stride_h > 0"]
reason = "garbage instead of empty"
link = "https://github.com/tensorflow/tensorflow/issues/64396"
"""


def geometry_record(size: int, rate: int, **fields: Any) -> dict[str, Any]:
    """A 3x3 kernel at `rate` over a size x size input, VALID, stride 1 (the geometry a `where` reads)."""
    geometry = {
        "case": f"g/in{size}-r{rate}", "target": "tensorflow.conv2d-cpu", "input_shape": [1, size, size, 1],
        "kernel_shape": [3, 3, 1, 1], "rate": [rate, rate], "stride": [1, 1], "padding": "VALID", "groups": 1,
        "outcome": "shape", "runtime": {"onednn_enabled": True},
    }  # fmt: skip
    return record(**{**geometry, **fields})


def test_runtime_facts_decide_not_the_environment_variable(tmp_path: Path) -> None:
    path = tmp_path / "expectations.toml"
    path.write_text(RUNTIME_AND_WHERE)
    entries = expectations.load(path).entries
    # 6x6 at rate 3 (k_eff 7): no valid output, and 6 - 7 + 2 > 0: TensorFlow lets oneDNN run.
    assert expectations.apply(geometry_record(6, 3), entries, environ={})["outcome"] == "xfail"
    off = geometry_record(6, 3, runtime={"onednn_enabled": False})
    assert expectations.apply(off, entries, environ={"TF_ENABLE_ONEDNN_OPTS": "1"})["outcome"] == "shape"
    unknown = geometry_record(6, 3)
    del unknown["runtime"]  # a record whose framework reported nothing (it never loaded)
    assert expectations.apply(unknown, entries, environ={})["outcome"] == "shape"


def test_the_unclamped_output_size_tells_the_geometries_apart(tmp_path: Path) -> None:
    from conformance.sweeps import record_variables

    names = record_variables(geometry_record(5, 3))
    assert names is not None
    assert (names["output_h"], names["unclamped_output_h"], names["padded_h"]) == (0, -1, 5)
    assert record_variables(geometry_record(6, 3))["unclamped_output_h"] == 0  # type: ignore[index]
    # The example, 5x5 at rate 3, VALID: TensorFlow's own size check raises ((5 - 7 + 1) / 1 < 0),
    # conformant, and the entry does not match it.
    path = tmp_path / "expectations.toml"
    path.write_text(RUNTIME_AND_WHERE)
    raised = geometry_record(5, 3, outcome="expected-error")
    assert expectations.apply(raised, expectations.load(path).entries, environ={})["outcome"] == "expected-error"


def test_an_xpass_names_the_condition_to_narrow_and_the_status_says_which(tmp_path: Path) -> None:
    path = tmp_path / "expectations.toml"
    path.write_text(RUNTIME_AND_WHERE)
    entries = expectations.load(path).entries
    passing = expectations.apply(geometry_record(6, 3, outcome="expected-error"), entries, environ={})
    assert passing["outcome"] == "xpass"
    assert "`where` holds here (valid_output=false, padded_h=6, effective_h=7, stride_h=1)" in passing["message"]
    assert "`dtypes` include float32" in passing["message"] and "`runtime` onednn_enabled=true" in passing["message"]
    failing = expectations.apply(geometry_record(6, 3), entries, environ={})
    in_float64 = expectations.apply(geometry_record(6, 3, dtype="float64", outcome="pass"), entries, environ={})
    assert (failing["outcome"], in_float64["outcome"]) == ("xfail", "pass")  # (not float32: not matched)

    def narrow(*records: dict[str, Any]) -> str | None:
        (status,) = expectations.statuses(entries, records)
        return status["narrow"]

    assert narrow(failing, passing) == "narrow `where` (some of its geometries pass)"
    assert narrow(passing).startswith("bound `versions` above")
    assert narrow(failing) is None
    # Passing in one dtype and failing in another points at `dtypes`.
    entries = [dataclasses.replace(entries[0], dtypes=("float32", "float16"))]
    half = expectations.apply(geometry_record(6, 3, dtype="float16", outcome="pass"), entries, environ={})
    assert half["outcome"] == "xpass"
    assert narrow(failing, half) == "narrow `dtypes` (it passes in float16, still fails in float32)"
    # A non-strict entry says some of its checks may pass: mixed results are a reproduction, not a fix.
    entries = [dataclasses.replace(entries[0], strict=False)]
    (status,) = expectations.statuses(entries, [failing, half])
    assert (status["status"], status["narrow"]) == ("reproduced", None)
