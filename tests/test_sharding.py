"""`--conformance-shard K/N`: whole geometries per shard, stable across machines, and N merged shards
equal to the unsharded run (real frameworks, each run a pytest process of its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.adapters.base import Target
from conformance.adapters.numpy import NumpyIm2col
from conformance.cases import load_file, load_paths
from conformance.check_records import make_record
from conformance.compare import Outcome, Verdict
from conformance.plugin.sharding import balanced, dealt, unit_of_case, unit_of_record, unit_seconds
from conformance.records import output_identity
from tests.projects import REPO, child_environment

pytest_plugins = ["pytester"]


def test_a_file_s_geometries_are_dealt_to_the_shards_in_turn() -> None:
    cases = {case.id: case for case in load_file(REPO / "cases" / "documents.toml", REPO).cases}
    unit = unit_of_case(cases["conv-5x5-0to24-ones2x2-stride2"])
    assert unit == '["conv", [1, 5, 5, 1], [2, 2, 1, 1], [1, 1], [2, 2], "VALID", 1, null]'
    units = [unit_of_case(case) for case in cases.values()]
    # Pinned: the same case must land in the same shard on every machine and Python (hash() is salted).
    assert [dealt(units, n, "documents")[unit] for n in (1, 2, 3, 7)] == [1, 2, 3, 4]
    for count in (2, 3, 7):
        shards = list(dealt(units, count, "documents").values())
        assert max(map(shards.count, range(1, count + 1))) - min(map(shards.count, range(1, count + 1))) <= 1
    # The suite's name picks the first shard: files of one geometry each do not all start shard 1.
    assert len({dealt(["one"], 3, f"suite-{i}")["one"] for i in range(30)}) == 3


def test_a_record_names_the_unit_its_case_was_sharded_by() -> None:
    # `--conformance-durations` balances units it reads off records: every geometry the corpus
    # states (transposed ones with their output padding, any rank) must read back the same.
    target = Target(NumpyIm2col(), "cpu", "strict")
    verdict = Verdict(Outcome.UNSUPPORTED, "(only the record's geometry is read)")
    corpus = load_paths([REPO / "cases"]).cases
    assert {case.op for case in corpus} == {"conv", "conv_transpose"} and {case.rank for case in corpus} == {1, 2, 3}
    differing = [
        case.qualified_id
        for case in corpus
        if unit_of_record(make_record(case, target, case.dtypes[0], verdict)) != unit_of_case(case)
    ]
    assert not differing


def test_every_draw_of_a_large_tier_geometry_is_in_one_unit() -> None:
    # The draws of one sweep point share every program a framework builds: split across shards,
    # each shard would build them all again.
    cases = load_file(REPO / "cases" / "large.toml", REPO).cases
    units: dict[str, set[str]] = {}
    for case in cases:
        point = case.id.rsplit("-d", 1)[0]
        units.setdefault(point, set()).add(unit_of_case(case))
    assert len(units) == 48 and all(len(found) == 1 for found in units.values())
    assert len({unit for found in units.values() for unit in found}) == 48  # and no two points share one
    shards = list(dealt((unit_of_case(case) for case in cases), 3, "large").values())
    assert [shards.count(k) for k in (1, 2, 3)] == [16, 16, 16]


def test_balanced_shards_deal_the_longest_cases_first() -> None:
    seconds = {"a": 10.0, "b": 6.0, "c": 5.0, "d": 4.0, "e": 3.0, "f": 2.0}
    assigned = balanced(seconds, 3)
    loads = {k: sum(s for case, s in seconds.items() if assigned[case] == k) for k in (1, 2, 3)}
    assert loads == {1: 10.0, 2: 11.0, 3: 9.0}  # a | b e f | c d: within 11/10 of the best split
    assert balanced(dict(reversed(seconds.items())), 3) == assigned  # the order of the file does not matter
    # A unit's seconds are its cases' checks', less the framework loading that fell on a first check.
    geometry = {"operation": "conv", "input_shape": [1, 4, 4, 1], "kernel_shape": [2, 2, 1, 1], "groups": 1}
    geometry |= {"rate": [1, 1], "stride": [1, 1], "padding": "SAME"}
    records = [
        {**geometry, "case": "x/a", "duration_s": 2.5, "load_s": 2.0},
        {**geometry, "case": "x/b", "duration_s": 1.0},
        {**geometry, "case": "x/c", "padding": "VALID", "duration_s": 4.0},
    ]
    assert unit_seconds(records) == {unit_of_record(records[0]): 1.5, unit_of_record(records[2]): 4.0}
    with pytest.raises(ValueError, match="record of 'x/d' states no 'groups'"):
        unit_seconds([{k: v for k, v in geometry.items() if k != "groups"} | {"case": "x/d"}])


# The reference's targets: sharding and merging are the same for every framework (the million
# section's test shards torch too), and each of this test's seven runs then starts in seconds. No
# known divergence concerns them: without the expectations file, a run does not read the whole
# corpus at its end to tell which entries are stale.
CORPUS = ("documents", "zero_sized", "padding", "stride_rate", "exact_integers")
SLICE = (*(f"--cases=cases/{name}.toml" for name in CORPUS), "-m", "numpy", "--expectations", "none")


def _run(directory: Path, name: str, *extra: str) -> dict:
    out = directory / f"{name}.json"
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", *SLICE,
        f"--conformance-json={out}", "--conformance-html=none", "--rootdir", str(REPO), *extra,
        str(REPO / "cases"),
    ]  # fmt: skip
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=child_environment())
    assert finished.returncode in (0, 1), finished.stdout[-3000:] + finished.stderr[-3000:]
    return json.loads(out.read_text())


def _checks(document: dict) -> dict[tuple[str, str, str], tuple[str, str | None]]:
    return {(r["case"], r["target"], r["dtype"]): (r["outcome"], output_identity(r)) for r in document["results"]}


def test_three_shards_merged_equal_the_unsharded_run(tmp_path: Path) -> None:
    whole = _run(tmp_path, "whole")
    shards = [_run(tmp_path, f"shard{k}", f"--conformance-shard={k}/3") for k in (1, 2, 3)]
    cases = [{r["case"] for r in shard["results"]} for shard in shards]
    assert all(cases) and not (cases[0] & cases[1] or cases[0] & cases[2] or cases[1] & cases[2])
    # Each record's geometry, as the record states it, names the unit its case was dealt by.
    shard_of = {}
    for name in CORPUS:
        units = [unit_of_case(c) for c in load_file(REPO / "cases" / f"{name}.toml", REPO).cases if c.tier == "default"]
        shard_of[name] = dealt(units, 3, name)
    found = [
        (shard_of[r["case"].split("/")[0]][unit_of_record(r)], k) for k, s in enumerate(shards, 1) for r in s["results"]
    ]
    assert all(dealt_to == k for dealt_to, k in found)
    merged_path = tmp_path / "merged.json"
    inputs = [str(tmp_path / f"shard{k}.json") for k in (1, 2, 3)]
    subprocess.run(
        [sys.executable, "-m", "conformance", "merge", *inputs, "-o", str(merged_path)], check=True, cwd=REPO
    )
    merged = json.loads(merged_path.read_text())
    assert len(whole["results"]) > 100 and {r["outcome"] for r in whole["results"]} == {"pass", "expected-error"}
    # The same checks, outcomes and output hashes (bit-identical outputs), and the same totals.
    assert _checks(merged) == _checks(whole)
    assert merged["summary"]["by_outcome"] == whole["summary"]["by_outcome"]
    assert len(merged["runs"]) == 3 and not merged["conflicts"]
    # Balanced by the unsharded run's durations: still a partition of the same checks.
    durations = f"--conformance-durations={tmp_path / 'whole.json'}"
    balanced_shards = [_run(tmp_path, f"balanced{k}", f"--conformance-shard={k}/3", durations) for k in (1, 2, 3)]
    union = {key: value for shard in balanced_shards for key, value in _checks(shard).items()}
    assert union == _checks(whole) and sum(len(s["results"]) for s in balanced_shards) == len(whole["results"])


@pytest.mark.parametrize("option", ["0/3", "4/3", "two/3", "1/0"])
def test_a_bad_shard_is_a_usage_error(pytester: pytest.Pytester, option: str) -> None:
    (pytester.path / "cases").mkdir()
    (pytester.path / "cases" / "mine.toml").write_text(
        '[[case]]\nid = "one"\ninput = { generator = "ones", shape = [1, 3, 3, 1] }\n'
        'kernel = { generator = "ones", shape = [1, 1, 1, 1] }\n'
    )
    result = pytester.runpytest_subprocess("-p", "conformance.plugin", f"--conformance-shard={option}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--conformance-shard {option}: write K/N with 1 <= K <= N*"])
