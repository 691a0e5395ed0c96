"""`--conformance-shard K/N`: whole cases per shard, stable across machines, and N merged shards
equal to the unsharded run (real frameworks, each run a pytest process of its own)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.plugin.sharding import balanced, case_seconds, hashed_shard
from conformance.records import output_identity
from tests.projects import REPO, child_environment

pytest_plugins = ["pytester"]


def test_a_case_s_shard_is_a_stable_hash_of_its_id() -> None:
    # Pinned: the same case must land in the same shard on every machine and Python (hash() is salted).
    assert [hashed_shard("documents/conv-5x5-0to24-ones2x2-stride2", n) for n in (1, 2, 3, 7)] == [1, 2, 2, 5]
    shards = [hashed_shard(f"geometry/case-{i}", 3) for i in range(3000)]
    assert set(shards) == {1, 2, 3} and all(900 < shards.count(k) < 1100 for k in (1, 2, 3))


def test_balanced_shards_deal_the_longest_cases_first() -> None:
    seconds = {"a": 10.0, "b": 6.0, "c": 5.0, "d": 4.0, "e": 3.0, "f": 2.0}
    assigned = balanced(seconds, 3)
    loads = {k: sum(s for case, s in seconds.items() if assigned[case] == k) for k in (1, 2, 3)}
    assert loads == {1: 10.0, 2: 11.0, 3: 9.0}  # a | b e f | c d: within 11/10 of the best split
    assert balanced(dict(reversed(seconds.items())), 3) == assigned  # the order of the file does not matter
    # A case's seconds leave out the framework loading that fell on its first check.
    records = [{"case": "a", "duration_s": 2.5, "load_s": 2.0}, {"case": "a", "duration_s": 1.0}]
    assert case_seconds(records) == {"a": 1.5}


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
    assert all(hashed_shard(case, 3) == k for k, found in enumerate(cases, 1) for case in found)
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
