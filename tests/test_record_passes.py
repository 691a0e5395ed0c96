"""A run's end in parts (conformance/record_passes.py): the records cut into runs of whole cases,
each folded in a process of its own and merged in order, make what one pass makes, byte for byte;
a part whose process fails is folded again in the parent; a pass that is stopped leaves no process."""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from conformance import contracts, expectations, history, record_files, record_passes, report
from conformance.plugin.controller import FrameworksThatRan
from conformance.record_files import SortedSpill, record_key, record_text
from conformance.results import write_json

TARGETS = ["torch.conv2d-cpu", "jax.conv_general_dilated-cpu", "tensorflow.nn.convolution-cpu", "torch.conv2d-gpu"]
LATE_TARGET = "onnxruntime.Conv-cpu"  # a column first seen in the later cases: numbered after the others
OUTCOMES = ["pass", "pass", "pass", "mismatch", "skip", "unsupported", "xfail", "error"]


def _records(count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Records of 150 cases, in random order: ties of the worst ratio (0.0, and equal ratios in
    different parts), failing checks of one cause throughout, messages and a warning that recur
    across parts, and some first met late; a dtype, a contract's worst ratio and a target's
    commonest reason to run nothing are decided by the later cases."""
    rng = random.Random(seed)
    records = []
    for number in range(count):
        case = rng.randrange(150)
        target = rng.choice(TARGETS + ([LATE_TARGET] if case >= 100 else []))
        outcome = rng.choice(OUTCOMES)
        record: dict[str, Any] = {
            "case": f"family/case-{case:03d}",
            "target": target,
            "dtype": rng.choice(["float32", "float64", "bfloat16", *(["float16"] if case >= 120 else [])]),
            "framework": target.split(".")[0],
            "framework_version": "1.0",
            "op": target.split(".", 1)[1].rsplit("-", 1)[0],
            "device": "cpu",
            "precision": "strict",
            "outcome": outcome,
            "input_shape": [1, 8, 8, 3] if case % 5 else [1, 16, 3],
            "input_sha256": f"{case:064x}",
            "error_ratio": rng.choice([0.0, 0.0, 0.5, 0.5, 2.0, None]),
            "message": rng.choice(["", "raised ValueError: rate 3 not allowed", f"late message {case}"])
            if case >= 90 or outcome != "pass"
            else "",
            "duration_s": rng.choice([0.001, 0.25]),
            "reproduction": f"x = tensor({case})\n# case {case}\ncall()",
            "serial": number,
        }
        if outcome == "mismatch":
            record["worst"] = {"index": [0, 1, 1, 0], "got": 1.5, "expected": 1.25}
        if outcome in ("xfail", "mismatch") and rng.random() < 0.5:
            record["expectation"] = {
                "id": "known-1" if rng.random() < 0.5 or record["dtype"] == "bfloat16" else "known-2",
                "link": "https://example.org/1",
            }
            record["observed_outcome"] = "mismatch"
        if outcome == "pass" and record["dtype"] == "bfloat16" and rng.random() < 0.2:  # known-2 passes in bfloat16
            record |= {"outcome": "xpass", "expectation": {"id": "known-2", "link": ""}, "observed_outcome": "pass"}
        if rng.random() < 0.1:
            record["warnings"] = [{"category": "UserWarning", "where": f"lib.py:{case % 3}", "message": f"w {case}"}]
        if rng.random() < 0.3:
            record["bounds"] = {"contract": {"id": "fp32-accumulation", "ratio": rng.choice([0.25, case / 100])}}
            if record["bounds"]["contract"]["ratio"] > 1 and outcome == "mismatch":
                record["outcome"] = "contract"
        if target.endswith("-gpu"):  # (it runs nothing: the report names its commonest reason)
            record = {**record, "outcome": "skip", "message": "no GPU here" if case < 50 else "CUDA not built"}
            record.pop("expectation", None)
        records.append(record)
    return records


def _folds(directory: Path) -> list[Any]:
    entries = [
        expectations.Expectation(id, "expectations.toml", 1, ("family/*",), ("torch.*", "jax.*"), "why", "link")
        for id in ("known-1", "known-2", "unmatched")
    ]
    return [
        report.ReportData(10**6, directory),  # (over FULL_DETAIL_RESULTS: brief cells too)
        expectations.StatusTally(entries),
        contracts.Tally([{"id": "fp32-accumulation", "statement": "fp32"}]),
        history.FailingChecks(),
        FrameworksThatRan(),
    ]


def _made(folds: list[Any], store: record_files.RecordFile, directory: Path) -> dict[str, Any]:
    """Everything the folds and the store made, as text: the report's data as the page embeds it."""
    page, known, kept, failing, ran = folds
    pieces: list[str] = []
    page.emit({"title": "t"}, pieces.append)
    made = {
        "store": store.path.read_text(encoding="utf-8"),
        "page": "".join(pieces),
        "statuses": json.dumps(known.statuses(), sort_keys=True),
        "contracts": json.dumps(kept.result(), sort_keys=True),
        "failing": failing.keys,
        "ran": sorted(ran.names),
    }
    store.discard()
    return made


def _spilled(records: list[dict[str, Any]], directory: Path) -> SortedSpill:
    spill = SortedSpill(directory)
    for record in records:
        spill.add(record_key(record), record_text(record))
    return spill


def _folded(records: list[dict[str, Any]], directory: Path, parts: int) -> dict[str, Any]:
    directory.mkdir()
    folds = _folds(directory)
    store = record_passes.fold_in_parts(_spilled(records, directory), folds, directory, parts)
    made = _made(folds, store, directory)
    assert sorted(p.name for p in directory.iterdir()) == [], "a part left a file behind"
    return made


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_files, "CHUNK", 211)  # chunks on disk, and a buffer not yet spilled
    monkeypatch.setattr(record_files, "CHUNK_BLOCK", 13)  # blocks that do not divide the chunks


@pytest.mark.usefixtures("small_chunks")
def test_a_pass_in_parts_makes_what_one_pass_makes_byte_for_byte(tmp_path: Path) -> None:
    records = _records(3000)
    one = _folded(records, tmp_path / "one", parts=1)
    page = json.loads(one["page"])
    assert any(column["target"] == LATE_TARGET for column in page["columns"]) and len(page["strings"]) > 3
    assert one["failing"] and one["ran"] == ["jax", "onnxruntime", "tensorflow", "torch"]
    assert "narrow `dtypes` (it passes in bfloat16" in one["statuses"] and '"broken": 0' not in one["contracts"]
    assert page["overview"]["idle"][0]["reason"] == "CUDA not built"
    for parts in (2, 3, 5):
        assert _folded(records, tmp_path / f"parts-{parts}", parts) == one, f"{parts} parts"


@pytest.mark.usefixtures("small_chunks")
def test_the_parts_are_runs_of_whole_cases_about_equal_in_number(tmp_path: Path) -> None:
    records = _records(3000, seed=1)
    spill = _spilled(records, tmp_path)
    bounds = spill.case_bounds(4)
    assert len(bounds) == 3 and bounds == sorted(set(bounds))
    parts = [list(spill.between(low, high)) for low, high in zip([None, *bounds], [*bounds, None], strict=True)]
    assert [text for part in parts for text in part] == list(spill.lines())  # each record once, in order
    for part, low, high in zip(parts, [None, *bounds], [*bounds, None], strict=True):
        cases = {json.loads(text)["case"] for text in part}
        assert all((low is None or case >= low) and (high is None or case < high) for case in cases)
        assert 3000 / 4 / 2 < len(part) < 3000 / 4 * 2, [len(p) for p in parts]
    one_case = _spilled([{**record, "case": "family/the-only-case"} for record in records[:500]], tmp_path)
    assert one_case.case_bounds(4) == []  # a part is a run of whole cases: here there is one


class _FailsInAForkedPart:
    """A fold that fails in any process but the one that made it: by raising, or by dying."""

    def __init__(self, how: str) -> None:
        self.maker = os.getpid()
        self.how = how
        self.count = 0

    def add(self, record: Mapping[str, Any]) -> None:
        if os.getpid() != self.maker:
            if self.how == "killed":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("this part's process fails")
        self.count += 1

    def merge(self, later: _FailsInAForkedPart) -> None:
        raise AssertionError("a failed part has nothing to merge")


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("how", ["raised", "killed"])
def test_a_part_whose_process_fails_is_folded_again_in_its_turn(tmp_path: Path, how: str) -> None:
    records = _records(2000, seed=2)
    one = _folded(records, tmp_path / "one", parts=1)
    directory = tmp_path / "failing"
    directory.mkdir()
    folds = _folds(directory)
    failing = _FailsInAForkedPart(how)
    store = record_passes.fold_in_parts(_spilled(records, directory), [*folds, failing], directory, parts=3)
    assert failing.count == 2000  # every part's records, here
    assert _made(folds, store, directory) == one
    # (the report's rows a killed part had begun stay for the directory's owner: a run's spill
    # directory goes with the run)
    assert [p.name for p in directory.iterdir() if not p.name.startswith(".report-rows-")] == []


class _StopsTheParent:
    """A fold that stops the pass in the process that made it (how a stop signal unwinds the
    controller: conformance/lifetime.py), while folding its own part or while merging another's."""

    def __init__(self, when: str) -> None:
        self.maker = os.getpid()
        self.when = when

    def add(self, record: Mapping[str, Any]) -> None:
        if os.getpid() == self.maker and self.when == "folding":
            raise KeyboardInterrupt

    def merge(self, later: _StopsTheParent) -> None:
        raise KeyboardInterrupt


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("when", ["folding", "merging"])
def test_a_stopped_pass_leaves_no_process_and_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    forked: list[Any] = []
    real_fork = record_passes._fork_part
    monkeypatch.setattr(record_passes, "_fork_part", lambda *a: forked.append(part := real_fork(*a)) or part)
    spill = _spilled(_records(2000, seed=3), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        record_passes.fold_in_parts(spill, [_StopsTheParent(when)], tmp_path, parts=3)
    assert len(forked) == 2
    for part in forked:
        with pytest.raises(ChildProcessError):  # killed and reaped
            os.waitpid(part.pid, os.WNOHANG)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("small_chunks")
def test_a_small_pass_is_one_part_and_a_large_one_a_part_per_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forked: list[str | None] = []
    monkeypatch.setattr(record_passes, "usable_cores", lambda: 2)
    real_fork = record_passes._fork_part
    monkeypatch.setattr(record_passes, "_fork_part", lambda *a: forked.append(a[3]) or real_fork(*a))
    records = _records(400, seed=4)
    record_passes.fold_in_parts(_spilled(records, tmp_path), [], tmp_path).discard()
    assert forked == []
    monkeypatch.setattr(record_passes, "PARTS_LEAST_RECORDS", 400)
    record_passes.fold_in_parts(_spilled(records, tmp_path), [], tmp_path).discard()
    assert len(forked) == 1


@pytest.mark.parametrize("kernel", ["copy_file_range", "sendfile", "neither", "no copy_file_range here"])
def test_a_store_is_copied_into_the_results_json_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    """The results JSON copies its sorted store's bytes (in the kernel where it can), between a
    header and a tail written through the same text file; and parts' stores append as one block."""

    def refused(source: int, target: int) -> int:
        raise OSError("not between these files")

    def missing(source: int, target: int) -> int:
        raise AttributeError("module 'os' has no attribute 'copy_file_range'")  # (macOS)

    if kernel != "copy_file_range":
        monkeypatch.setattr(record_files, "_copy_file_range", missing if kernel.startswith("no") else refused)
    if kernel == "neither":
        monkeypatch.setattr(record_files, "_sendfile", refused)
    records = sorted(_records(300, seed=5), key=record_key)
    first = record_files.store_sorted(records[:100])
    for more in (records[100:100], records[100:]):
        record_passes.append_store(first, record_files.store_sorted(more))
    empty = record_files.store_sorted([])
    record_passes.append_store(empty, first)
    assert empty.count == 300 and not first.path.exists()
    document = {"schema_version": 1, "summary": {"total": 300}, "results": empty}
    with (tmp_path / "results.json").open("w", encoding="utf-8") as handle:
        write_json(document, handle)
    assert json.loads((tmp_path / "results.json").read_text()) == {**document, "results": records}
    empty.discard()


@pytest.mark.parametrize("piece", [7, 64, 1 << 20])
def test_a_part_s_rows_are_read_back_one_at_a_time_whatever_the_pieces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, piece: int
) -> None:
    """A part's rows file (compact rows, comma-separated) is read back row by row in pieces
    (`report.ROWS_PIECE`), however the pieces cut it: inside strings, between rows, at a comma."""
    monkeypatch.setattr(report, "ROWS_PIECE", piece)
    rows = [
        {"case": f"c{n}", "dtype": "float32", "cells": {n: {"o": "pass", "m": n, "w": '{"}],\\ é \u2260'}}, "rd": []}
        for n in range(40)
    ]
    path = tmp_path / "rows.json"
    path.write_text(",".join(record_files.compact_json(row) for row in rows), encoding="utf-8")
    assert list(report._written_rows(path)) == json.loads(f"[{path.read_text(encoding='utf-8')}]")
    path.write_text(path.read_text(encoding="utf-8")[:-5], encoding="utf-8")  # a torn last row
    with pytest.raises(AssertionError, match="not rows"):
        list(report._written_rows(path))
