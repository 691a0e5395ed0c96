"""Records on disk: the external sort, reading a results JSON one record at a time, and the
controller's results, merge and report written from them without holding them."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from conformance import record_files, results
from conformance.merging import merge
from conformance.record_files import open_results_json, record_key, sort_records
from conformance.report import embedded_data, write_report
from conformance.results import ResultsWriter, atomic_write, write_json


def _records(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "case": f"family/case-{rng.randrange(count // 3 + 1):05d}",
            "target": rng.choice(["torch.conv2d-cpu", "jax.conv_general_dilated-cpu", "numpy.im2col-cpu"]),
            "dtype": rng.choice(["float32", "float64"]),
            "framework": "torch",
            "framework_version": "1.0",
            "op": "conv2d",
            "device": "cpu",
            "precision": "strict",
            "outcome": rng.choice(["pass", "pass", "skip", "mismatch"]),
            "serial": number,  # the order of arrival, to see that the sort is stable
            "message": 'tab\there, newline\nthere, quote " and é',
        }
        for number in range(count)
    ]


def test_sorting_in_chunks_orders_like_sorted_and_keeps_arrival_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(record_files, "CHUNK", 97)  # many chunks, merged from disk
    records = _records(1000)
    stored = sort_records(records, tmp_path)
    assert list(stored) == sorted(records, key=record_key) and len(stored) == 1000
    assert [p.name for p in tmp_path.iterdir()] == [stored.path.name]  # the chunks are gone
    stored.discard()
    assert not stored.path.exists()


def test_a_results_json_is_read_back_one_record_at_a_time(tmp_path: Path) -> None:
    records = sorted(_records(50), key=record_key)
    document = {"schema_version": 1, "summary": {"total": 50}, "results": records}
    path = tmp_path / "results.json"
    atomic_write(path, lambda handle: write_json(document, handle))
    assert json.loads(path.read_text()) == document  # still one JSON document
    header, stored = open_results_json(path)  # type: ignore[misc]
    assert header == {"schema_version": 1, "summary": {"total": 50}} and list(stored) == records
    # A file laid out otherwise (pretty-printed by hand) is left to a whole read.
    path.write_text(json.dumps(document, indent=2))
    assert open_results_json(path) is None
    empty = tmp_path / "empty.json"
    atomic_write(empty, lambda handle: write_json({"results": []}, handle))
    header, stored = open_results_json(empty)  # type: ignore[misc]
    assert header == {} and list(stored) == []


def test_the_writer_s_json_comes_from_its_spill_sorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_files, "CHUNK", 64)
    writer = ResultsWriter(tmp_path / "results.json")
    records = _records(300, seed=1)
    for record in records:
        writer.add(record)  # type: ignore[arg-type]
    document = writer.finish({"cpu": "test"}, ["test"])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["results"] == sorted(records, key=record_key) == list(document["results"])
    assert written["summary"]["total"] == 300
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no spill or store left behind
    # The report draws every record, a row per case x dtype in case order.
    write_report(document, tmp_path / "index.html")
    model = embedded_data((tmp_path / "index.html").read_text())
    checks = {(r["case"], r["target"], r["dtype"]) for r in records}  # (random ids repeat: one cell each)
    assert sum(len(row["cells"]) for row in model["rows"]) == len(checks)
    assert [(r["case"], r["dtype"]) for r in model["rows"]] == sorted({(r["case"], r["dtype"]) for r in records})


def test_what_goes_alongside_the_results_json_runs_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's end writes its report while the results JSON is written in a thread (its copy and
    fsync wait on the kernel); if the report fails, the JSON is still written whole first."""
    records = _records(300, seed=4)
    report_begun = threading.Event()
    real_write_json = results.write_json

    def write_json_once_the_report_has_begun(document: dict[str, Any], handle: Any) -> int:
        assert report_begun.wait(10), "the results JSON was written before the report began"
        return real_write_json(document, handle)

    monkeypatch.setattr(results, "write_json", write_json_once_the_report_has_begun)
    seen: list[dict[str, Any]] = []

    def alongside(document: dict[str, Any]) -> None:
        seen.append(dict(document))
        report_begun.set()
        raise RuntimeError("the report failed")

    writer = ResultsWriter(tmp_path / "results.json")
    for record in records:
        writer.add(record)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="the report failed"):
        writer.finish({"cpu": "test"}, ["test"], alongside=alongside)
    assert seen[0]["environment"] == {"cpu": "test"} and seen[0]["summary"]["total"] == 300
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["results"] == sorted(records, key=record_key)


@pytest.mark.parametrize("count", [0, 1, 2500])
def test_a_sorted_store_is_copied_into_the_json_as_the_lines_it_holds(tmp_path: Path, count: int) -> None:
    """A run's end writes its sorted store as the results block, and the JSON copies its bytes: the
    same file as writing the store's records one line at a time (blocks of 1,000 lines meet)."""
    records = _records(count, seed=2)
    store = sort_records(records, tmp_path)
    assert store.block and list(store) == sorted(records, key=record_key)
    files = {}
    for block in (True, False):
        store.block = block
        files[block] = tmp_path / f"block-{block}.json"
        atomic_write(files[block], lambda handle: write_json({"summary": {"total": count}, "results": store}, handle))
    assert files[True].read_bytes() == files[False].read_bytes()
    header, stored = open_results_json(files[True])  # type: ignore[misc]
    assert header == {"summary": {"total": count}} and list(stored) == sorted(records, key=record_key)


def test_merge_streams_and_chooses_like_the_rules_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record_files, "CHUNK", 5)
    base = {"case": "c", "dtype": "float32", "framework": "torch", "framework_version": "1.0"}
    cpu = {"environment": {"cpu": "a"}, "results": [
        {**base, "target": "t-gpu", "outcome": "skip"},
        {**base, "target": "t-cpu", "outcome": "pass", "output_sha256": "1"},
    ]}  # fmt: skip
    gpu = {"environment": {"cpu": "b"}, "results": [
        {**base, "target": "t-gpu", "outcome": "pass", "output_sha256": "2"},
        {**base, "target": "t-cpu", "outcome": "mismatch", "output_sha256": "3"},
    ]}  # fmt: skip
    merged = merge([("cpu", cpu), ("gpu", gpu)])
    results = {r["target"]: r for r in merged["results"]}
    assert results["t-gpu"]["outcome"] == "pass" and results["t-gpu"]["run"] == 1  # a skip gives way
    assert results["t-cpu"]["outcome"] == "mismatch"  # disagreeing runs: the worse one, and a conflict
    assert [c["target"] for c in merged["conflicts"]] == ["t-cpu"]
    assert merged["summary"]["total"] == 2


def test_records_travel_as_key_and_text_and_read_back_alike_with_or_without_orjson(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker sends (key, text) pairs, a report's all in one string; the text is the record's JSON
    as every results file holds it, and it parses back to the same record whichever parser is installed."""
    record = {
        **_records(1)[0],
        "worst": {"index": [0, 1, 2, 3], "expected": 0.1, "got": "nan"},
        "ratio": 1e-310,
        # Non-ASCII, and a lone surrogate: an OSError's path decoded with surrogateescape.
        "message": "OSError: [Errno 2] '/tmp/\udcff.so' \u2260 \U0001f600",
    }
    # A report's records as one string, in order: keys that JSON escapes (a case file named with a
    # newline, an edition's non-ASCII) and texts of every length, the empty batch too.
    others = [{**r, "case": "odd\nsuite/c\u00e9", "framework_version": "2.0 [\u2260]"} for r in _records(3, seed=1)]
    sent = [record_files.wire_record(r) for r in [record, *others]]
    wire = record_files.to_wire(sent)
    assert isinstance(wire, str) and record_files.from_wire(wire) == sent
    assert record_files.from_wire(record_files.to_wire([])) == []
    [(key, text), *_] = record_files.from_wire(wire)
    # (a lone surrogate: orjson refuses it, json writes it)
    assert key == record_key(record) and text == json.dumps(record, allow_nan=False)
    assert record_files.parse_record(text) == record
    plain = {**record, "message": "\u2260 \U0001f600"}
    fast = record_files.record_text(plain)
    if record_files._fast_dumps is not None:  # (orjson: compact, UTF-8)
        assert fast == record_files._fast_dumps(plain).decode() and "\u2260" in fast
    monkeypatch.setattr(record_files, "_fast_dumps", None)
    assert record_files.record_text(plain) == json.dumps(plain, allow_nan=False)
    assert json.loads(fast) == record_files.parse_record(fast) == plain
    monkeypatch.setattr(record_files, "_fast_loads", None)
    assert record_files.parse_record(text) == record and record_files.parse_record(fast) == plain
    for torn in ({"case": "x"}, wire[:-1], wire + "}"):
        with pytest.raises(AssertionError, match="not records on the wire"):
            record_files.from_wire(torn)


def test_a_worker_s_own_files_read_back_what_it_wrote_with_or_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's state and batch journal (`scratch_json`): orjson's text where it can, json's for
    what orjson refuses (a lone surrogate), and either reads back as the same value."""
    plain = {"record": {**_records(1)[0], "message": "\u2260 \U0001f600", "worst": {"got": "nan"}}, "limit_s": 1.5}
    odd = {"record": {**plain["record"], "message": "OSError: '/tmp/\udcff.so'"}}
    for value in (plain, odd):
        assert record_files.parse_record(record_files.scratch_json(value)) == value
        assert json.loads(record_files.scratch_json(value)) == value
    monkeypatch.setattr(record_files, "_fast_dumps", None)
    assert record_files.scratch_json(plain) == json.dumps(plain).encode()


def test_a_spill_sorts_as_records_arrive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller's spill: records added one at a time, chunks written as they fill, one merge at the end."""
    monkeypatch.setattr(record_files, "CHUNK", 50)
    monkeypatch.setattr(record_files, "CHUNK_BLOCK", 7)  # blocks that do not divide the chunks
    records = _records(333, seed=2)
    spill = record_files.SortedSpill(tmp_path)
    for record in records:
        spill.add(record_key(record), record_files.record_text(record))
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".chunk-")]) == 6
    stored = spill.store()
    assert list(stored) == sorted(records, key=record_key)
    assert [p.name for p in tmp_path.iterdir()] == [stored.path.name]


def test_the_report_of_a_file_found_out_of_order_sorts_it_first(tmp_path: Path) -> None:
    """A results file in the suite's layout is read as it goes, in case order; one that is not in
    order (written by hand, or by an older tool) is sorted on disk, not drawn with split cases."""
    records = _records(120, seed=3)
    path = tmp_path / "results.json"
    atomic_write(path, lambda handle: write_json({"results": list(reversed(sorted(records, key=record_key)))}, handle))
    header, stored = open_results_json(path)  # type: ignore[misc]
    write_report({**header, "results": stored}, tmp_path / "index.html")
    model = embedded_data((tmp_path / "index.html").read_text())
    assert [(r["case"], r["dtype"]) for r in model["rows"]] == sorted({(r["case"], r["dtype"]) for r in records})
    assert not list(record_files.scratch_directory().glob(".report-rows-*")), "the abandoned pass left its rows"


def test_a_killed_run_s_spill_is_removed_by_the_next_run_that_writes_there(tmp_path: Path) -> None:
    """A spill directory is abandoned when no process holds its lock (whatever its name's pid says):
    a killed run's is removed, a live run's is left alone, and a run removes its own as it ends."""
    claim = (
        "import sys, time; from pathlib import Path; from conformance.results import claim_spill\n"
        "directory, lock = claim_spill(Path(sys.argv[1]))\n"
        "(directory / '.chunk-x.pickle').write_bytes(b'...')\n"
        "print(directory, flush=True); time.sleep(float(sys.argv[2]))\n"
    )

    def other_run(seconds: float) -> tuple[subprocess.Popen[str], Path]:
        process = subprocess.Popen(
            [sys.executable, "-c", claim, str(tmp_path / "results.json"), str(seconds)],
            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1],
        )  # fmt: skip
        assert process.stdout is not None
        return process, Path(process.stdout.readline().strip())

    killed, abandoned = other_run(60)
    killed.kill()
    killed.wait()
    alive, live = other_run(60)
    old_layout = tmp_path / ".results.spill-12345"  # (an older version's: no lock file)
    old_layout.mkdir()
    try:
        writer = ResultsWriter(tmp_path / "results.json")
        writer.add(_records(1)[0])  # type: ignore[arg-type]
        ours = writer.spill_directory
        assert ours is not None and ours.is_dir() and ours not in (abandoned, live)
        assert not abandoned.exists() and not old_layout.exists()
        assert live.exists(), "a live run's spill was removed"
        writer.finish({"cpu": "test"}, ["test"])
        assert not ours.exists(), "a finished run removes its own spill"
        assert live.exists()
    finally:
        alive.kill()
        alive.wait()


def test_a_very_large_report_keeps_details_for_failing_cells_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above FULL_DETAIL_RESULTS a conformant or not-run cell keeps what the matrix shows, figures to
    4 significant digits, empty fields left out; a failing cell keeps everything."""
    import conformance.report as report

    monkeypatch.setattr(report, "FULL_DETAIL_RESULTS", 10)
    base = {"framework": "torch", "framework_version": "1.0", "op": "conv2d", "device": "cpu", "precision": "strict"}
    records = [
        {**base, "case": "c1", "target": "torch.conv2d-cpu", "dtype": "float32", "outcome": "pass",
         "error_ratio": 0.123456789, "duration_s": 0.00123456789, "exact": False, "message": "",
         "reproduction": "import numpy as np\n# case c1\ny = 1\n"},
        {**base, "case": "c1", "target": "jax.conv-cpu", "dtype": "float32", "outcome": "mismatch",
         "error_ratio": 12.3456789, "message": "off", "reproduction": "x = 1\n# case c1\ny = 2\n"},
    ] + [
        {**base, "case": f"c{n}", "target": "torch.conv2d-cpu", "dtype": "float32", "outcome": "skip", "message": ""}
        for n in range(2, 12)
    ]  # fmt: skip
    write_report({"results": records}, tmp_path / "index.html")
    model = embedded_data((tmp_path / "index.html").read_text())
    assert model["brief"]["limit"] == 10
    cells = {(row["case"], n): cell for row in model["rows"] for n, cell in row["cells"].items()}
    columns = {c["n"]: c for c in model["columns"]}
    passed, failed = (next(cell for (case, n), cell in cells.items() if case == "c1" and cell["o"] == o)
                      for o in ("pass", "mismatch"))  # fmt: skip
    assert passed == {"o": "pass", "r": 0.1235, "t": 0.001235}
    assert failed["r"] == 12.3456789 and "rp" in failed and model["strings"][failed["m"]] == "off"
    assert all(cell == {"o": "skip"} for (case, _), cell in cells.items() if case != "c1")
    assert len(columns) == 2
    # Each cell in its target's column.
    placed = {(case, columns[int(n)]["target"]): cell["o"] for (case, n), cell in cells.items() if int(n) in columns}
    assert placed == {("c1", "torch.conv2d-cpu"): "pass", ("c1", "jax.conv-cpu"): "mismatch"} | {
        (f"c{n}", "torch.conv2d-cpu"): "skip" for n in range(2, 12)
    }


# A check's record, field by field in the order every results file writes them (`_check_fields`).
RECORD_FIELDS = (
    "case", "case_file", "target", "framework", "framework_version", "op", "variant", "quantity", "baseline",
    "device", "precision", "dtype", "outcome", "input_shape", "kernel_shape", "output_shape", "got_shape",
    "got_dtype", "rate", "stride", "padding", "pads", "groups", "operation", "expect", "exact", "max_abs_error",
    "max_rel_error", "max_ulp", "error_ratio", "bounds", "worst", "error_map", "message", "reproduction",
    "input_sha256", "kernel_sha256", "output_sha256", "description", "tags", "duration_s",
)  # fmt: skip


def test_a_check_s_record_has_its_case_s_and_target_s_fields_in_one_order() -> None:
    """Records are made from a template per target and the case's fields: every case and target
    gives the same field order (a transposed case's output padding after its operation, a Keras
    target's backend version after its framework's), the case's own values, and a record changed
    in place changes no later one."""
    from conformance.adapters import all_targets
    from conformance.cases import load_file
    from conformance.check_records import make_record
    from conformance.compare import Outcome, Verdict

    root = Path(__file__).resolve().parent.parent / "cases"
    cases = [load_file(root / name, root).cases[i] for name in ("basics.toml", "conv_transpose.toml") for i in (0, 1)]
    verdict = Verdict(Outcome.SKIP, "not run")
    for case in cases:
        transposed = case.op != "conv"
        targets = [t for t in all_targets() if not t.adapter.mismatch(case.op, case.rank)]
        assert any(t.adapter.framework.backend for t in targets), "a front-end's target belongs here"
        for target in targets:
            record = make_record(case, target, "float32", verdict)
            expected = list(RECORD_FIELDS)
            if target.adapter.framework.backend:
                expected.insert(expected.index("framework_version") + 1, "backend_version")
            if transposed:
                expected.insert(expected.index("operation") + 1, "output_padding")
                assert record["output_padding"] == list(case.geometry.output_padding)  # type: ignore[attr-defined]
            assert list(record) == expected, (case.qualified_id, target.id)
            assert (record["case"], record["case_file"], record["target"]) == (case.qualified_id, case.file, target.id)
            assert record["input_shape"] == list(case.input_shape) and record["output_shape"] == list(case.output_shape)
            assert record["pads"] == [list(p) for p in case.geometry.pads] and record["tags"] == list(case.tags)
            assert (record["operation"], record["description"]) == (case.op, case.description)
            # (as a check fills its record in: fields the verdict does not set, and a known divergence's)
            record["reproduction"], record["input_sha256"], record["expectation"] = "changed", "changed", {}
            again = make_record(case, target, "float32", verdict)
            assert (again["reproduction"], again["input_sha256"], "expectation" in again) == ("", None, False)


def test_a_report_row_s_compact_json_is_json_s_from_either_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """`compact_json` (a report's rows): orjson's text where it is installed, integer keys written
    as json writes them; the same value parsed back as json's compact text."""
    value = {"cells": {0: {"o": "pass", "r": 0.25}, 12: {"m": 3}}, "rd": ["\u2260"], "x": [1e-310, 1e16, None]}
    text = record_files.compact_json(value)
    assert json.loads(text) == json.loads(json.dumps(value)) and ", " not in text
    if record_files._fast_dumps is not None:
        assert text == record_files._fast_dumps(value, option=record_files._NON_STR_KEYS).decode()
    monkeypatch.setattr(record_files, "_fast_dumps", None)
    assert record_files.compact_json(value) == json.dumps(value, separators=(",", ":"), allow_nan=False)
