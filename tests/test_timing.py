"""Where a check's time goes (conformance.timing): the figures the benchmarks divide by."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from conformance import judging, runner, timing
from conformance.adapters import ConvCall, Target
from conformance.cases import load_file
from tests.fault_adapters import Slow

CASE = """
[[case]]
id = "timed"
input = { generator = "normal", seed = 1, shape = [1, 40, 40, 8] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 8, 8] }
rate = 2
padding = "SAME"
"""


class SlowToLoad(Slow):
    op = "slow-to-load"
    load_s = 0.05
    loaded = False

    def check_available(self, device: str) -> None:
        if not self.loaded:
            time.sleep(self.load_s)
            self.loaded = True


def test_each_record_splits_its_time_into_load_framework_and_reference(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text(CASE)
    (case,) = load_file(tmp_path / "t.toml", tmp_path).cases
    adapter = SlowToLoad()
    judging.prepare.cache_clear()
    first = runner.run_check(case, Target(adapter, "cpu", "strict"), "float64")
    second = runner.run_check(case, Target(adapter, "cpu", "strict"), "float64")
    assert first["outcome"] == second["outcome"] == "pass"
    # The framework call sleeps 50 ms, and so does the first load; the reference runs once per (case, dtype).
    assert first[timing.LOAD] >= 0.05 > second[timing.LOAD]
    assert first[timing.FRAMEWORK] >= 0.05 and second[timing.FRAMEWORK] >= 0.05
    assert first[timing.REFERENCE] > 0 and second[timing.REFERENCE] == 0
    for record in (first, second):
        parts = sum(record[kind] for kind in timing.KINDS)
        assert parts <= record["duration_s"]


def test_the_totals_only_grow_and_since_reads_the_difference() -> None:
    before = timing.totals()
    with timing.spent(timing.REFERENCE):
        time.sleep(0.01)
    spent = timing.since(before)
    assert spent[timing.REFERENCE] >= 0.01 and spent[timing.LOAD] == spent[timing.FRAMEWORK] == 0


def test_a_call_that_raises_still_counts_as_framework_time(tmp_path: Path) -> None:
    class Raises(Slow):
        op = "raises"

        def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
            time.sleep(0.02)
            raise RuntimeError("the framework refused")

    (tmp_path / "t.toml").write_text(CASE)
    (case,) = load_file(tmp_path / "t.toml", tmp_path).cases
    record = runner.run_check(case, Target(Raises(), "cpu", "strict"), "float32")
    assert record["outcome"] == "error" and record[timing.FRAMEWORK] >= 0.02
