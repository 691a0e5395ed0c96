"""The release bisection's search, with a fake registry and a fake runner (no environment is made):
the first release that differs found in about log2(N) runs, releases that do not install skipped
and named, flaky checks set aside and never bisected."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from packaging.version import Version

from conformance import bisection
from conformance.bisection import BisectError, Key, Observed, Ran, Skipped

CHECK: Key = ("documents/tf-4x4-rate2-same", "keras-tensorflow.DepthwiseConv2D@channels-first-cpu", "float32")
OTHER: Key = ("documents/aspp-branch-rate12-same", "keras-tensorflow.DepthwiseConv2D@channels-first-cpu", "float32")
RELEASES = [f"3.{minor}.{patch}" for minor in range(16) for patch in range(3)]  # 48 releases


class FakeRegistry:
    def __init__(self, versions: Iterable[str]) -> None:
        self.listed = list(versions)

    def versions(self, package: str) -> list[str]:
        return list(reversed(self.listed))  # (a registry's own order is not the search's)


class FakeRunner:
    """Each release's observations from a function of (version, repeat); `broken` releases do not install."""

    def __init__(
        self, behaviour: Callable[[str, int], dict[Key, Observed]], broken: Iterable[str] = (), results: bool = False
    ) -> None:
        self.behaviour = behaviour
        self.broken = set(broken)
        self.calls: list[tuple[str, int]] = []

    def run(self, version: str, repeat: int) -> Ran | Skipped:
        self.calls.append((version, repeat))
        if version in self.broken:
            return Skipped("does not install: no wheel for this Python")
        return Ran(self.behaviour(version, repeat), {"keras": version}, None, 0.1)


def changes_at(first_bad: str) -> Callable[[str, int], dict[Key, Observed]]:
    """Errors before `first_bad`, passes from it on; OTHER passes throughout with the same bits."""

    def behaviour(version: str, repeat: int) -> dict[Key, Observed]:
        fixed = Version(version) >= Version(first_bad)
        return {
            CHECK: Observed("pass" if fixed else "error", "ab12" if fixed else None, 0.1 if fixed else None),
            OTHER: Observed("pass", "cd34", 0.2),
        }

    return behaviour


@pytest.mark.parametrize("first_bad", ["3.0.1", "3.7.2", "3.14.1", "3.15.0", "3.15.2"])
def test_finds_the_first_release_that_differs_in_log2_runs(first_bad: str) -> None:
    runner = FakeRunner(changes_at(first_bad))
    result = bisection.search("keras", "3.0.0", "3.15.2", FakeRegistry(RELEASES), runner, endpoint_repeats=2)
    assert result.first_bad == first_bad
    assert result.last_good == RELEASES[RELEASES.index(first_bad) - 1]
    between = len(result.candidates) - 1  # 46 releases strictly between the endpoints
    assert between == 46
    searched = [call for call in runner.calls if call[0] not in ("3.0.0", "3.15.2")]
    assert len(searched) <= math.ceil(math.log2(between + 1))  # 6, where trying each would take 46
    assert runner.calls[:4] == [("3.0.0", 0), ("3.0.0", 1), ("3.15.2", 0), ("3.15.2", 1)]
    assert [key for key, _, _ in result.changed] == [CHECK]
    assert f"first release that differs from 3.0.0 is {first_bad}" in bisection.render(result)


def test_a_release_that_does_not_install_is_skipped_and_named_when_it_could_be_the_answer() -> None:
    broken = {"3.7.0", "3.7.1", "3.6.2"}
    runner = FakeRunner(changes_at("3.7.2"), broken=broken)
    result = bisection.search("keras", "3.0.0", "3.15.2", FakeRegistry(RELEASES), runner)
    assert result.first_bad == "3.7.2"
    skipped = {t.version for t in result.trials if t.verdict == "skipped"}
    assert skipped <= broken and skipped  # tried, said so, and the search went on
    # Every skipped release between the last good one and the answer may be the real first one.
    assert result.last_good is not None
    later = sorted((v for v in skipped if Version(v) > Version(result.last_good)), key=Version)
    assert result.untested == later
    text = bisection.render(result)
    assert "does not install: no wheel for this Python" in text
    if result.untested:
        assert "or one of the untested" in text


def test_an_endpoint_that_does_not_install_stops_the_bisection() -> None:
    runner = FakeRunner(changes_at("3.7.2"), broken={"3.0.0"})
    with pytest.raises(BisectError, match=r"good release 3\.0\.0 cannot be tested: does not install"):
        bisection.search("keras", "3.0.0", "3.15.2", FakeRegistry(RELEASES), runner)


def test_a_check_whose_repeats_disagree_is_flaky_and_not_bisected() -> None:
    base = changes_at("3.7.2")

    def behaviour(version: str, repeat: int) -> dict[Key, Observed]:
        seen = base(version, repeat)
        # OTHER fails now and then: on the bad release's first run (not its second) and on two
        # releases the search tries, where taken at its word it would lead the search astray.
        flips = (version == "3.15.2" and repeat == 0) or version in ("3.7.1", "3.9.0")
        seen[OTHER] = Observed("mismatch" if flips else "pass", "cd34", 0.2)
        return seen

    result = bisection.search("keras", "3.0.0", "3.15.2", FakeRegistry(RELEASES), FakeRunner(behaviour))
    assert result.first_bad == "3.7.2"
    assert {f.key for f in result.flaky} == {OTHER}
    assert [key for key, _, _ in result.changed] == [CHECK]
    assert "flaky, not bisected" in bisection.render(result)


def test_only_flaky_differences_are_refused() -> None:
    def behaviour(version: str, repeat: int) -> dict[Key, Observed]:
        return {CHECK: Observed("pass", "ab12" if repeat == 0 else "ef56", 0.1)}  # bits vary on every repeat

    with pytest.raises(BisectError, match=r"does not differ from 3\.0\.0 .* 1 flaky check"):
        bisection.search("keras", "3.0.0", "3.15.2", FakeRegistry(RELEASES), FakeRunner(behaviour), compare="bits")


def test_a_history_that_calls_a_check_flaky_keeps_it_out_of_the_search() -> None:
    with pytest.raises(BisectError, match="nothing to bisect"):
        bisection.search(
            "keras", "3.0.0", "3.15.2", FakeRegistry(RELEASES), FakeRunner(changes_at("3.7.2")), known_flaky=[CHECK]
        )


def test_bits_and_ratios_count_only_when_asked() -> None:
    def behaviour(version: str, repeat: int) -> dict[Key, Observed]:
        late = Version(version) >= Version("3.9.0")
        return {CHECK: Observed("pass", "ffff" if late else "ab12", 0.9 if late else 0.1)}

    registry = FakeRegistry(RELEASES)
    with pytest.raises(BisectError, match="nothing to bisect"):
        bisection.search("keras", "3.0.0", "3.15.2", registry, FakeRunner(behaviour), compare="outcome")
    assert bisection.search("keras", "3.0.0", "3.15.2", registry, FakeRunner(behaviour), compare="bits").first_bad == (
        "3.9.0"
    )
    ratio = bisection.search("keras", "3.0.0", "3.15.2", registry, FakeRunner(behaviour), compare="ratio")
    assert ratio.first_bad == "3.9.0"  # 0.1 -> 0.9 is beyond the factor of 2


def test_differs_rules() -> None:
    a = Observed("pass", "ab", 0.1)
    assert not bisection.differs(a, Observed("pass", "cd", 0.15), "ratio", 2.0)
    assert bisection.differs(a, Observed("pass", "cd", 0.15), "bits", 2.0)
    assert bisection.differs(a, Observed("pass", "ab", 0.3), "ratio", 2.0)
    assert not bisection.differs(a, Observed("pass", None, 0.1), "bits", 2.0)  # no comparable bits: not a change
    assert bisection.differs(a, None, "outcome", 2.0) and not bisection.differs(None, None, "outcome", 2.0)


def test_releases_between_orders_by_version_and_leaves_out_pre_releases() -> None:
    listed = ["0.4.30", "0.10.0", "0.9.2", "0.10.1rc1", "0.5.0", "not-a-version", "0.4.2"]
    assert bisection.releases_between(listed, "0.4.30", "0.10.0") == ["0.5.0", "0.9.2", "0.10.0"]
    assert "0.10.1rc1" in bisection.releases_between(listed, "0.4.30", "0.10.1rc1", pre=True)
    with pytest.raises(BisectError, match="must be older"):
        bisection.releases_between(listed, "0.10.0", "0.5.0")


def test_a_bad_release_the_registry_does_not_have_is_refused() -> None:
    with pytest.raises(BisectError, match=r"no release 3\.99\.0"):
        bisection.search("keras", "3.0.0", "3.99.0", FakeRegistry(RELEASES), FakeRunner(changes_at("3.7.2")))


def test_environments_hold_everything_else_at_the_checkouts_constraints(tmp_path: Path) -> None:
    pins = "# pins\ntorch==2.13.0\njax==0.10.2\njaxlib==0.10.2\nkeras==3.15.1\nml_dtypes==0.6.0\n"
    (tmp_path / "constraints.txt").write_text(pins)
    jax = bisection.ReleaseEnvironments("jax", tmp_path, [], tmp_path, cache=tmp_path / "envs", uv="uv")
    assert jax.requirements("0.9.0")[:2] == ["jax==0.9.0", "jaxlib==0.9.0"]  # jaxlib moves with jax
    assert jax.constraints().split() == ["#", "pins", "torch==2.13.0", "keras==3.15.1"]
    keras = bisection.ReleaseEnvironments("keras", tmp_path, [], tmp_path, cache=tmp_path / "envs", uv="uv")
    assert "tensorflow-cpu" in keras.requirements("3.10.0")  # Keras 3 needs a backend it does not depend on
    assert "jax==0.10.2" in keras.constraints() and "keras==" not in keras.constraints()
    assert "ml_dtypes" not in keras.constraints()  # an older release may need an older one
    assert keras.directory("3.10.0") != keras.directory("3.11.0")
    assert keras.directory("3.10.0") == keras.directory("3.10.0")
    runtime = bisection.ReleaseEnvironments("onnxruntime", tmp_path, [], tmp_path, cache=tmp_path / "envs", uv=None)
    assert runtime.requirements("1.31.1") == ["onnxruntime==1.31.1", "onnx"]  # its models are built with onnx


def test_the_command_line_runs_the_corpus_selection_and_keeps_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bisect PACKAGE --good V -- SELECTION`: the selection after "--" reaches the runner with the
    corpus put first (not the harness's own tests), and the log is kept beside the results."""
    from conformance.cli import main

    made: list[bisection.ReleaseEnvironments] = []

    class Environments(bisection.ReleaseEnvironments):
        def run(self, version: str, repeat: int) -> Ran | Skipped:
            made.append(self)
            return FakeRunner(changes_at("3.7.2")).run(version, repeat)

    monkeypatch.setattr(bisection, "PipRegistry", lambda: FakeRegistry(RELEASES))
    monkeypatch.setattr(bisection, "ReleaseEnvironments", Environments)
    monkeypatch.setattr(bisection, "tree_bytes", lambda path: (0, 0))
    status = main(["bisect", "keras", "--good", "3.0.0", "-o", str(tmp_path), "--", "-k", "cases", "-m", "keras"])
    assert status == 0
    assert made and made[0].selection == ["cases", "-k", "cases", "-m", "keras"]
    assert made[0].package == "keras"
    log = (tmp_path / "bisect.txt").read_text()
    assert "bad 3.15.2" in log  # the newest release, when --bad is not given
    assert "the first release that differs from 3.0.0 is 3.7.2" in log
    assert log in capsys.readouterr().out
    status = main(["bisect", "keras", "--good", "3.0.0", "-o", str(tmp_path), "--", "my_cases/", "-k", "x"])
    assert made[-1].selection == ["my_cases/", "-k", "x"]  # a path given: no corpus added
    assert (
        main(["bisect", "keras", "--good", "3.0.0", "--skip", ">=3.7,<3.7.2", "-o", str(tmp_path), "--", "-k", "x"])
        == 0
    )
    assert "or one of the untested 3.7.0, 3.7.1 before it" in (tmp_path / "bisect.txt").read_text()
    with pytest.raises(SystemExit):
        main(["bisect", "keras", "--good", "3.0.0", "--skip", "not a spec", "--", "-k", "x"])


def test_last_passing_from_a_history_starts_the_search_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--good last-passing`: the newest release in the history in which the bad release's failing
    checks passed (3.6.0 here, not the 3.8.0 run where they failed), and the search from there."""
    from conformance import history
    from conformance.cli import main

    def regresses_at(version: str, repeat: int) -> dict[Key, Observed]:
        broken = Version(version) >= Version("3.7.2")
        return {CHECK: Observed("error" if broken else "pass", None if broken else "ab12", None if broken else 0.1)}

    class Environments(bisection.ReleaseEnvironments):
        def run(self, version: str, repeat: int) -> Ran | Skipped:
            return FakeRunner(regresses_at).run(version, repeat)

    def run_document(version: str, outcome: str, day: int) -> dict[str, object]:
        record = {"case": CHECK[0], "target": CHECK[1], "dtype": CHECK[2], "framework": "keras-tensorflow",
                  "framework_version": version, "outcome": outcome, "expect": "reference"}  # fmt: skip
        versions = {"keras-tensorflow": version}
        environment = {"cpu": "EPYC", "packages": {"keras": version}, "framework_versions": versions}
        return {"created": f"2026-01-0{day}T00:00:00+00:00", "command": ["pytest"], "environment": environment,
                "results": [record]}  # fmt: skip

    store = tmp_path / "history.sqlite"
    with history.History(store) as past:
        for day, (version, outcome) in enumerate([("3.4.0", "pass"), ("3.6.0", "pass"), ("3.8.0", "error")], 1):
            past.add(run_document(version, outcome, day), f"run{day}.json")
    monkeypatch.setattr(bisection, "PipRegistry", lambda: FakeRegistry(RELEASES))
    monkeypatch.setattr(bisection, "ReleaseEnvironments", Environments)
    monkeypatch.setattr(bisection, "tree_bytes", lambda path: (0, 0))
    arguments = ["bisect", "keras", "--good", "last-passing", "--history", str(store), "-o", str(tmp_path)]
    assert main([*arguments, "--", "-k", "depthwise"]) == 0
    out = capsys.readouterr().out
    assert f"the last release in {store} in which they passed: keras 3.6.0" in out
    assert "the first release that differs from 3.6.0 is 3.7.2" in out
    with pytest.raises(SystemExit, match="give --history PATH"):
        main(["bisect", "keras", "--good", "last-passing", "-o", str(tmp_path), "--", "-k", "depthwise"])


def test_environment_disk_counts_linked_files_once_and_apart(tmp_path: Path) -> None:
    import os

    environments, uv_cache = tmp_path / "environments", tmp_path / "uv"
    environments.mkdir()
    uv_cache.mkdir()
    (uv_cache / "wheel-file").write_bytes(b"x" * 100_000)
    os.link(uv_cache / "wheel-file", environments / "linked")  # as uv installs from its cache
    os.link(uv_cache / "wheel-file", environments / "linked-again")
    (environments / "own").write_bytes(b"y" * 50_000)
    total, own = bisection.tree_bytes(environments)
    assert 150_000 <= total < 170_000  # the linked file once, not twice
    assert 50_000 <= own < 60_000


def test_releases_excluded_as_known_broken_are_never_run_and_stay_untested() -> None:
    runner = FakeRunner(changes_at("3.7.2"))
    known_broken = {"3.7.0", "3.7.1"}
    result = bisection.search(
        "keras", "3.0.0", "3.15.2", FakeRegistry(RELEASES), runner, excluded=lambda v: v in known_broken
    )
    assert result.first_bad == "3.7.2" and result.last_good == "3.6.2"
    assert not {version for version, _ in runner.calls} & known_broken
    assert result.untested == ["3.7.0", "3.7.1"]
    assert "excluded (--skip)" in bisection.render(result)


def test_a_package_of_multi_gigabyte_gpu_builds_is_refused_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    from conformance.cli import main

    assert main(["bisect", "torch", "--good", "2.10.0", "--bad", "2.13.0", "--", "-k", "x"]) == 2
    assert "not bisecting torch: PyPI's Linux torch wheels are CUDA builds" in capsys.readouterr().err
