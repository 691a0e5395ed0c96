"""The pytest plugin end to end, in a subprocess: --cases, xdist, the JSON file, invalid cases."""

from __future__ import annotations

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytest_plugins = ["pytester"]

CORPUS = """
[[case]]
id = "ok-rate2"
tags = ["mine"]
input = { generator = "normal", seed = 1, shape = [1, 6, 6, 2] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 2] }
rate = 2
padding = "SAME"

[[case]]
id = "broken"
dilaton = 2
input = { generator = "ones", shape = [1, 6, 6, 1] }
kernel = { generator = "ones", shape = [3, 3, 1, 1] }
"""


@pytest.fixture
def corpus(pytester: pytest.Pytester) -> Path:
    directory = pytester.mkdir("mycases")
    (directory / "mine.toml").write_text(CORPUS)
    return directory


def run(pytester: pytest.Pytester, corpus: Path, *args: str) -> tuple[pytest.RunResult, dict]:
    out = pytester.path / "out" / "results.json"
    result = pytester.runpytest_subprocess(
        "-p", "conformance.plugin", "--cases", str(corpus), "--conformance-json", str(out), "-m", "numpy", *args
    )
    return result, json.loads(out.read_text())


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_results_json_and_invalid_cases(pytester: pytest.Pytester, corpus: Path, workers: list[str]) -> None:
    result, document = run(pytester, corpus, *workers, "--junitxml", "junit.xml")
    # JUnit XML has the items, not the records (the results file has them).
    junit = ElementTree.parse(pytester.path / "junit.xml")
    assert len(list(junit.iter("testcase"))) == 2 and not list(junit.iter("property"))
    # One valid case x one dtype on the numpy target passes; the broken case fails on its own.
    result.assert_outcomes(passed=1, failed=1, deselected=result.parseoutcomes().get("deselected", 0))
    result.stdout.fnmatch_lines(["*mine.toml:12: case 'broken': field 'dilaton': unknown key 'dilaton'*"])
    assert document["schema_version"] == 1
    (record,) = document["results"]
    assert record["case"] == "mine/ok-rate2" and record["target"] == "numpy.im2col-cpu"
    assert record["outcome"] == "pass" and 0 <= record["error_ratio"] < 1
    assert document["case_errors"][0]["field"] == "dilaton"
    assert document["summary"]["by_outcome"] == {"pass": 1}
    assert "numpy" in document["environment"]["frameworks"]
    # Each process that ran checks says how many, its peak memory and where its time went.
    processes = document["environment"]["processes"]
    ran = {name: p for name, p in processes.items() if p["checks"]}
    assert sum(p["checks"] for p in ran.values()) == 1 and set(ran) <= ({"main"} if not workers else {"gw0", "gw1"})
    assert all(p["peak_rss_bytes"] > 10**7 for p in processes.values())
    assert record["framework_s"] > 0 and record["framework_s"] + record["reference_s"] <= record["duration_s"]
    stream = [json.loads(line)["kind"] for line in (pytester.path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(stream[1:-1]) == ["case_error", "result"]  # streamed as they arrived
    assert (stream[0], stream[-1]) == ("run", "end")


def test_ids_markers_and_keywords(pytester: pytest.Pytester, corpus: Path) -> None:
    result = pytester.runpytest_subprocess(
        "-p", "conformance.plugin", "--cases", str(corpus), "--collect-only", "-q", "-k", "mine and float32 and gpu",
        "--conformance-gpu", "probe", "--conformance-batch", "off",
    )  # fmt: skip
    result.stdout.fnmatch_lines(["*mine.toml::ok-rate2[[]torch.conv2d-gpu-defaults-float32[]]*"])
    assert "numpy.im2col" not in result.stdout.str()  # the numpy target has no GPU


@pytest.mark.parametrize("driver", ["absent", "present"])
def test_gpu_checks_without_a_gpu_driver_are_one_skip_per_target(
    pytester: pytest.Pytester, corpus: Path, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    from conformance.adapters import modes

    node = pytester.path / "nvidiactl"
    if driver == "present":
        node.write_text("")
    monkeypatch.setattr(modes, "GPU_DEVICE_NODES", (str(node),))
    out = pytester.path / "out" / "results.json"
    result = pytester.runpytest(
        "-p", "conformance.plugin", "--cases", str(corpus), "--conformance-json", str(out), "-m", "torch and gpu",
        "-k", "not grad and not hvp and not vs-cpu and not layer", "-rs",
    )  # fmt: skip
    records = json.loads(out.read_text())["results"]
    gpu_records = [r for r in records if r["device"] == "gpu"]
    assert gpu_records and all(r["outcome"] == "skip" for r in gpu_records)
    if driver == "absent":
        # One item per target and file, each holding a skip record per check, decided without loading torch.
        result.stdout.fnmatch_lines(
            ["*torch.conv2d-gpu: 1 check(s) not run: no GPU on this machine (none of*nvidiactl exists)"]
        )
        assert result.parseoutcomes()["skipped"] == len({r["target"] for r in gpu_records}) == 5
        assert all("no GPU on this machine" in r["message"] for r in gpu_records)
    else:  # a driver: every check asks torch, which has no CUDA device here (one batch per case x dtype)
        assert result.parseoutcomes()["skipped"] == len({(r["case"], r["dtype"]) for r in gpu_records}) == 1
        assert all("no CUDA device visible to torch" in r["message"] for r in gpu_records)


KNOWN = """
[[divergence]]
id = "numpy-listed"
cases = ["mine/ok-*"]
targets = ["numpy.im2col-cpu"]
strict = {strict}
reason = "listed to prove xpass"
link = "https://example.org/xpass"

[[divergence]]
id = "broken-entry"
cases = ["*"]
targets = ["*"]
reason = "no link"
"""


@pytest.mark.parametrize("strict", ["true", "false"])
def test_a_listed_divergence_that_passes_is_xpass(pytester: pytest.Pytester, corpus: Path, strict: str) -> None:
    known = pytester.path / "known.toml"
    known.write_text(KNOWN.format(strict=strict))
    result, document = run(pytester, corpus, "--expectations", str(known), "-k", "ok-rate2")
    (record,) = document["results"]
    assert record["outcome"] == "xpass" and record["observed_outcome"] == "pass"
    (status,) = [e for e in document["expectations"] if e["id"] == "numpy-listed"]
    assert status["status"] == "fixed"
    result.stdout.fnmatch_lines(["*known divergence numpy-listed: fixed (0 xfail, 1 xpass*"])
    # The invalid entry fails on its own, naming the file, entry and field.
    result.stdout.fnmatch_lines(["*known.toml*case 'broken-entry'*'link' is a required property*"])
    if strict == "true":
        result.assert_outcomes(failed=2, deselected=result.parseoutcomes().get("deselected", 0))
        result.stdout.fnmatch_lines(["*1  numpy forward, xpass (float32): known divergence numpy-listed no longer*"])
        assert "matched this conformant check" in record["message"] and "narrow the condition" in record["message"]
    else:
        result.assert_outcomes(passed=1, failed=1, deselected=result.parseoutcomes().get("deselected", 0))


def test_a_listed_divergence_that_fails_is_xfail(pytester: pytest.Pytester, corpus: Path) -> None:
    known = pytester.path / "known.toml"
    known.write_text(KNOWN.format(strict="true").split('[[divergence]]\nid = "broken-entry"')[0])
    pytester.makeconftest(
        """
from conformance.adapters import numpy as numpy_adapter
original = numpy_adapter.NumpyIm2col.run
def broken(self, call, device, precision):
    return original(self, call, device, precision) * 2
numpy_adapter.NumpyIm2col.run = broken
"""
    )
    result, document = run(pytester, corpus, "--expectations", str(known), "-k", "ok-rate2")
    result.assert_outcomes(xfailed=1, deselected=result.parseoutcomes().get("deselected", 0))
    (record,) = document["results"]
    assert (record["outcome"], record["observed_outcome"]) == ("xfail", "mismatch")
    assert record["expectation"]["link"] == "https://example.org/xpass"
    assert document["expectations"][0]["status"] == "reproduced"
    assert (pytester.path / "reports" / "index.html").exists()


LARGE = """
tier = "large"
[[sweep]]
id = "draws"
seed = 3
replicates = 4
size = 6
kernel_size = 3
[sweep.axes]
rate = [1, 2]
"""


def _collected(pytester: pytest.Pytester, *args: str) -> set[str]:
    result = pytester.runpytest("-p", "conformance.plugin", "--collect-only", "-q", *args)
    return {line.strip() for line in result.outlines if "::" in line}


def test_the_large_tier_is_collected_only_when_asked_for(pytester: pytest.Pytester, corpus: Path) -> None:
    (corpus / "big.toml").write_text(LARGE)
    cases = ["--cases", str(corpus)]
    assert not {i for i in _collected(pytester, *cases) if "big.toml" in i}
    large = {i for i in _collected(pytester, *cases, "-m", "large and numpy") if "case-file-error" not in i}
    # 2 rates x 4 draws: each rate's draws (replicates of one geometry) one batch
    assert {i.split("/")[-1] for i in large} == {f"big.toml::draws-r{rate}-d0[batch-float32+3]" for rate in (1, 2)}
    one_each = {i for i in _collected(pytester, *cases, "-m", "large and numpy", "-k", "draws")}
    assert len(one_each) == 8 and all("big.toml::draws-r" in i and "-d" in i for i in one_each)  # (-k: a case's own)
    pytester.makeconftest(CHECKS_CONFTEST)  # the batches hold every check that single items would
    batched, _, _ = _checks_selected(pytester, *cases, "-m", "large and numpy")
    single, _, _ = _checks_selected(pytester, *cases, "-m", "large and numpy", "--conformance-batch=off")
    assert batched == single and len({check[0] for check in single if "big/" in check[0]}) == 8
    assert _collected(pytester, *cases, "--conformance-tier", "large", "-m", "numpy") >= large
    default_tier = _collected(pytester, *cases, "-m", "not large and numpy")
    assert default_tier and not {i for i in default_tier if "big.toml" in i}  # (big.toml is collected first)


def _markers_from_id(nodeid: str) -> set[str]:
    target = nodeid.split("[", 1)[1].rstrip("]")
    if not nodeid.split("::")[1].startswith("not-run"):
        target = target.rsplit("-", 1)[0]  # a check's id ends in its dtype
    device = "gpu" if "-gpu" in target else "cpu"
    return {"conformance", target.split(".")[0], device}


@pytest.mark.parametrize("expression", ["torch and cpu", "not (tensorflow or gpu)", "jax and not conformance"])
def test_markers_select_during_collection_exactly_as_pytest_would(
    pytester: pytest.Pytester, corpus: Path, expression: str
) -> None:
    # Checks that -m rules out are never made; what remains must be what pytest's own -m would keep.
    from _pytest.mark.expression import Expression

    compiled = Expression.compile(expression)
    cases = ("--cases", str(corpus), "--conformance-batch", "off")  # (one item per check: its id names its target)
    everything = {i for i in _collected(pytester, *cases) if "case-file-error" not in i}

    def kept(nodeid: str) -> bool:
        markers = _markers_from_id(nodeid)
        return bool(compiled.evaluate(lambda name, **kw: name in markers))

    expected = {i for i in everything if kept(i)}
    selected = _collected(pytester, *cases, "-m", expression)
    assert {i for i in selected if "case-file-error" not in i} == expected


CHECKS_CONFTEST = """
import json, re

def pytest_collection_finish(session):
    # The checks each selected item will run: a batch's, or the check of a single item.
    checks = []
    for item in session.items:
        cases = getattr(item, "cases", None) or ([item.case] if hasattr(item, "case") else [])
        for case in cases:
            for target in getattr(item, "targets", None) or [item.target]:
                checks.append([case.qualified_id, target.id, item.dtype])
    (session.config.rootpath / "checks.json").write_text(json.dumps(sorted(checks)))
"""


def _checks_selected(pytester: pytest.Pytester, *args: str) -> tuple[list[list[str]], int, list[str]]:
    """The checks a collection selects, how many checks it deselected, and the selected items' ids."""
    result = pytester.runpytest("-p", "conformance.plugin", "--collect-only", "-q", "--conformance-gpu=probe", *args)
    found = re.search(r"\((\d+) deselected\)", result.stdout.str())
    checks = json.loads((pytester.path / "checks.json").read_text())
    return checks, int(found.group(1)) if found else 0, [line for line in result.outlines if "::" in line]


@pytest.mark.parametrize(
    ("option", "expression", "batched"),
    [
        ("-m", "torch and cpu", True),
        ("-m", "not (tensorflow or gpu)", True),
        ("-m", "not (torch and jax)", False),  # a batch would carry both: its checks go one by one
        ("-m", "torch or numpy(x=1)", True),  # call arguments: only a marker that has them
        ("-k", "float32 and not grad", True),
        ("-k", "conv2d-cpu or DepthwiseConv2D", True),  # parts of targets' ids
        ("-k", "plain and not numpy", True),
        ("-k", "not batch", False),  # the batch's own name: its checks go one by one
        ("-k", "torch and jax", False),  # no check has both
    ],
)
def test_batches_select_the_checks_single_items_would(
    pytester: pytest.Pytester, corpus: Path, option: str, expression: str, batched: bool
) -> None:
    """-m and -k select the same checks, and count the same checks deselected, whether the checks
    run as batches (the default) or one item each, as pytest would judge each check's own item."""
    pytester.makeconftest(CHECKS_CONFTEST)
    single, single_deselected, _ = _checks_selected(
        pytester, "--cases", str(corpus), option, expression, "--conformance-batch=off"
    )
    checks, deselected, ids = _checks_selected(pytester, "--cases", str(corpus), option, expression)
    assert checks == single and deselected == single_deselected
    assert any("[batch-" in i for i in ids) == batched, ids
    assert checks or expression == "torch and jax"


def test_conformance_target_collects_only_matching_targets(pytester: pytest.Pytester, corpus: Path) -> None:
    items = _collected(
        pytester, "--cases", str(corpus), "--conformance-target", "torch.conv2d@*-cpu", "--conformance-batch", "off"
    )
    targets = {i.split("[")[1].rsplit("-", 1)[0] for i in items if "ok-rate2" in i}
    assert targets and all(t.startswith("torch.conv2d@") and t.endswith("-cpu") for t in targets)
    assert "torch.conv2d@grad-input-cpu" not in targets  # ok-rate2 does not opt into derivatives


# --- a framework that only a conftest knows ------------------------------------------------------

FAKE_FRAMEWORK_CONFTEST = '''
import numpy as np

from conformance import reference
from conformance.adapters import Adapter
from conformance.frameworks import Framework


class Build(Framework):
    """A build under test that pip does not know: its version comes from the build itself."""

    def version(self):
        return "1.2.3"


FAKEFW = Build("fakefw", "A fake framework")


class OffByOne(Adapter):
    framework = FAKEFW
    op = "conv"
    devices = ("cpu",)

    def check_available(self, device):
        return None

    def run(self, call, device, precision):
        y = reference.conv_resolved(call.x.astype(np.float64), call.w.astype(np.float64), call.geometry, call.groups)
        return (y + 1).astype(call.x.dtype)

    def reproduction(self, call, device, precision):
        return "y = fakefw.conv(x, w)"

    def environment(self):
        return {"version": "1.2.3", "devices": ["cpu"]}


def pytest_conformance_adapters(config):
    return [OffByOne()]
'''

FAKE_FRAMEWORK_KNOWN = """
[[divergence]]
id = "fakefw-off-by-one"
cases = ["mine/*"]
targets = ["fakefw.conv-cpu"]
versions = { fakefw = ">=1.2, <2" }
reason = "adds one to every element"
link = "https://example.org/fakefw/1"
"""


def test_a_framework_registered_by_a_conftest_alone_is_known_everywhere(pytester: pytest.Pytester) -> None:
    """Markers, version-ranged known divergences, run labels, the report and merge all read the
    framework's record from the adapter the hook returned: nothing else names it."""
    from conformance.merging import merge
    from conformance.report import embedded_data, write_report
    from conformance.run_environment import run_label

    pytester.makeconftest(FAKE_FRAMEWORK_CONFTEST)
    corpus = pytester.mkdir("mycases")
    (corpus / "mine.toml").write_text(CORPUS.split('[[case]]\nid = "broken"')[0])
    known = pytester.path / "known.toml"
    known.write_text(FAKE_FRAMEWORK_KNOWN)
    out = pytester.path / "out" / "a.json"
    result = pytester.runpytest_subprocess(
        "-p", "conformance.plugin", "--strict-markers", "--cases", str(corpus), "-m", "fakefw",
        f"--expectations={known}", f"--conformance-json={out}", "--conformance-html=none",
    )  # fmt: skip
    result.assert_outcomes(xfailed=1, deselected=result.parseoutcomes().get("deselected", 0))
    document = json.loads(out.read_text())
    (record,) = document["results"]  # -m fakefw selected exactly its target
    assert record["framework"] == "fakefw" and record["framework_version"] == "1.2.3"
    assert record["outcome"] == "xfail" and record["expectation"]["id"] == "fakefw-off-by-one"
    assert document["environment"]["framework_versions"]["fakefw"] == "1.2.3"
    assert "fakefw 1.2.3" in run_label(document["environment"])
    markers = pytester.runpytest_subprocess("-p", "conformance.plugin", "--cases", str(corpus), "--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.fakefw: A fake framework targets"])
    # Another build of the same framework: merge keeps both versions apart, each run labelled by its own.
    other = json.loads(json.dumps(document))
    other["environment"]["framework_versions"]["fakefw"] = "2.0.0"
    other["results"][0]["framework_version"] = "2.0.0"
    merged = merge([("a.json", document), ("b.json", other)])
    assert sorted(r["framework_version"] for r in merged["results"]) == ["1.2.3", "2.0.0"]
    assert ["fakefw 1.2.3" in run_label(run["environment"]) for run in merged["runs"]] == [True, False]
    assert "fakefw 2.0.0" in run_label(merged["runs"][1]["environment"])
    # The report: a run is labelled by its framework versions, and each version is a column of its own.
    write_report(document, pytester.path / "a.html")
    (run,) = embedded_data((pytester.path / "a.html").read_text())["runs"]
    assert "fakefw 1.2.3" in run["label"]
    write_report(merged, pytester.path / "merged.html")
    columns = embedded_data((pytester.path / "merged.html").read_text())["columns"]
    # (a run made under a machine profile, or with a kernel-choosing variable set, names it after the version)
    versions = sorted((c["framework"], c["version"].split(" [")[0]) for c in columns)
    assert versions == [("fakefw", "1.2.3"), ("fakefw", "2.0.0")]


SWEEP = """
[[sweep]]
id = "many"
seed = 4
channels = 2
out_channels = 2
kernel_size = 3
[sweep.axes]
size = [7, 8, 9, 10, 11, 12, 13, 14]
rate = [1, 2, 3]
"""
NEARLY = """
[[divergence]]
id = "numpy-doubles-on-old-numpy"
cases = ["many/*"]
targets = ["numpy.im2col-cpu"]
versions = { numpy = "<1" }
reason = "a numpy release that doubles every answer"
link = "https://example.org/old-numpy"
"""
DOUBLING = """
from conformance.adapters import numpy as numpy_adapter
original = numpy_adapter.NumpyIm2col.run
def broken(self, call, device, precision):
    return original(self, call, device, precision) * 2
numpy_adapter.NumpyIm2col.run = broken
"""


@pytest.mark.parametrize(
    "asked", [[], ["--conformance-html=none"], ["-rf"], ["-v"]], ids=["default", "no-report", "rf", "verbose"]
)
def test_a_red_run_reads_on_one_screen(pytester: pytest.Pytester, asked: list[str]) -> None:
    """24 checks fail of one cause: one group with its count, an example and the entry that nearly
    knew it, instead of a FAILURES section and a FAILED line each (those on request). With a report
    or without one (the summary's tables come from the report's pass or from their own)."""
    cases = pytester.mkdir("many")
    (cases / "many.toml").write_text(SWEEP)
    (pytester.path / "known.toml").write_text(NEARLY)
    pytester.makeconftest(DOUBLING)
    out = pytester.path / "out" / "results.json"
    result = pytester.runpytest_subprocess(
        "-p", "conformance.plugin", "--cases", str(cases), "--conformance-json", str(out), "-m", "numpy",
        "--expectations", str(pytester.path / "known.toml"), "-p", "no:cacheprovider", *asked,
    )  # fmt: skip
    result.assert_outcomes(failed=24, deselected=result.parseoutcomes().get("deselected", 0))
    result.stdout.fnmatch_lines(
        [
            "*failing checks: 24 in 1 group(s) by cause*",
            "*   24  numpy forward, mismatch (float32): values beyond the error bound",
            "*e.g. many/many-in*numpy.im2col-cpu float32: error/bound *, worst at *",
            "*nearly known: numpy-doubles-on-old-numpy: `versions` numpy <1, here *",
        ]
    )
    text = result.stdout.str()
    failed_lines = [line for line in text.splitlines() if line.startswith("FAILED ")]
    # Only the FAILURES part: where CI is set, pytest leaves the short summary's lines untruncated and
    # each FAILED line then carries its reproduction too.
    sections = text.split("short test summary info")[0].count("reproduction:")
    if not set(asked) - {"--conformance-html=none"}:
        assert not failed_lines and sections == 0 and "= FAILURES =" not in text
        summary = text[text.index("- conformance -") :]
        assert len(summary.splitlines()) < 20, summary
    else:  # pytest as usual: each check's failure with its reproduction, and a FAILED line each
        assert len(failed_lines) == 24 and sections == 24
    records = json.loads(out.read_text())["results"]
    assert all(r["near_miss"]["id"] == "numpy-doubles-on-old-numpy" for r in records)


@pytest.mark.parametrize("durations", [None, 5])
@pytest.mark.parametrize("listed", ["fE", "fEsp"])
@pytest.mark.parametrize("worker", [False, True], ids=["controller", "worker"])
def test_reports_are_kept_only_where_something_reads_them(listed: str, worker: bool, durations: int | None) -> None:
    """A worker forgets each report once it is sent; the controller keeps failures in full, a
    stand-in for each pass and skip it only counts (the summary line's figures are unchanged), and
    the real ones where -r lists them; passed setups and teardowns not at all. Under --durations,
    which reads every report's time, the controller keeps them all."""
    from types import SimpleNamespace

    from conformance.plugin import COUNTED, ReportsKeptOnlyWhereRead

    reporter = SimpleNamespace(stats={}, reportchars=listed)
    config = SimpleNamespace(
        pluginmanager=SimpleNamespace(get_plugin=lambda name: reporter), option=SimpleNamespace(durations=durations)
    )
    keeper = ReportsKeptOnlyWhereRead(config, worker=worker)  # type: ignore[arg-type]
    made = []
    for category in ["", "passed", "", "", "skipped", "", "failed", ""]:
        report = SimpleNamespace(category=category)
        reporter.stats.setdefault(category, []).append(report)  # as the reporter does, first
        keeper.pytest_runtest_logreport(report)  # type: ignore[arg-type]
        made.append(report)
    counts = {category: len(kept) for category, kept in reporter.stats.items() if kept}
    if worker:
        assert counts == {}
        return
    if durations is not None:
        assert counts == {"": 5, "passed": 1, "skipped": 1, "failed": 1}
        assert all(report in made for kept in reporter.stats.values() for report in kept)  # the reports, not stand-ins
        return
    assert counts == {"passed": 1, "skipped": 1, "failed": 1}
    assert reporter.stats["failed"] == [made[6]]
    assert reporter.stats["passed"] == [made[1] if "p" in listed else COUNTED]
    assert reporter.stats["skipped"] == [made[4] if "s" in listed else COUNTED]


def test_a_worker_that_is_gone_leaves_no_copy_of_the_collection_in_the_controller() -> None:
    """xdist keeps each worker's collected ids to the end of the run; a worker that went (retired
    or crashed) points at the shared list instead, and the live ones keep theirs."""
    from types import SimpleNamespace

    from conformance.plugin.controller import share_the_collection

    ids = [f"cases/a.toml::c{n}[numpy.im2col-cpu-float32]" for n in range(1000)]

    class Node:  # (hashable by identity, as xdist's WorkerController)
        pass

    first, gone, alive = Node(), Node(), Node()
    copies = {node: [text[:] for text in ids] for node in (first, gone, alive)}
    scheduler = SimpleNamespace(node2collection=dict(copies), collection=copies[first])  # as LoadScheduling holds them
    config = SimpleNamespace(pluginmanager=SimpleNamespace(get_plugin=lambda name: SimpleNamespace(sched=scheduler)))
    share_the_collection(config, gone)  # type: ignore[arg-type]
    assert scheduler.node2collection[gone] is scheduler.collection and len(scheduler.node2collection) == 3
    assert scheduler.node2collection[alive] is copies[alive]
    share_the_collection(config, Node())  # type: ignore[arg-type]  # (a node it never had)
    assert len(scheduler.node2collection) == 3


def test_a_value_made_while_the_run_goes_on_is_the_value_or_its_error() -> None:
    """The controller reads the corpus in a thread while its workers run (`_Later`): asked for at
    the end, it is what the function returns, or the error it raised, raised where it is asked for."""
    import threading

    from conformance.plugin.controller import _Later

    made_in: list[str] = []

    def make() -> dict[str, int]:
        made_in.append(threading.current_thread().name)
        return {"cases": 3}

    assert _Later(make).result() == {"cases": 3} and made_in[-1] == "conformance-corpus"
    assert _Later(make, now=True).result() == {"cases": 3} and made_in[-1] == threading.current_thread().name
    assert _Later(lambda: None).result() is None  # (a value of None is a value)

    def broken() -> dict[str, int]:
        raise ValueError("cases/x.toml: not TOML")

    later = _Later(broken)
    with pytest.raises(ValueError, match="not TOML"):
        later.result()


VALID_CASES = CORPUS.split('[[case]]\nid = "broken"')[0]  # (an invalid case fails the run)
HYPOTHESIS_PROBE = """
import sys

def pytest_unconfigure(config):
    who = getattr(config, "workerinput", {}).get("workerid", "controller")
    (config.rootpath / f"hypothesis-{who}").write_text(str("hypothesis" in sys.modules))
"""


def test_hypothesis_is_not_imported_to_summarize_a_run_that_never_used_it(
    pytester: pytest.Pytester, corpus: Path
) -> None:
    """Hypothesis' pytest plugin imports Hypothesis for its terminal summary (0.13 s in the controller
    and in each worker); a run of cases alone has nothing for it to say, and leaves it out."""
    pytester.makeconftest(HYPOTHESIS_PROBE)
    (corpus / "mine.toml").write_text(VALID_CASES)
    result, _ = run(pytester, corpus, "-n", "2", "-p", "hypothesispytest")
    assert result.ret == 0, result.stdout.str()[-3000:]
    probes = {path.name: path.read_text() for path in pytester.path.glob("hypothesis-*")}
    assert probes == dict.fromkeys(("hypothesis-controller", "hypothesis-gw0", "hypothesis-gw1"), "False"), probes


@pytest.mark.parametrize("why", ["statistics", "a failure"])
def test_hypothesis_summarizes_a_run_it_may_have_something_to_say_about(
    pytester: pytest.Pytester, corpus: Path, why: str
) -> None:
    """Statistics asked for, or a failing test (a failing property-based test's examples travel on
    its report): Hypothesis' summary runs as it would without the suite."""
    pytester.makeconftest(HYPOTHESIS_PROBE)
    (corpus / "mine.toml").write_text(VALID_CASES)
    arguments = ["-p", "conformance.plugin", "-p", "hypothesispytest", "--cases", str(corpus)]
    if why == "statistics":
        arguments.append("--hypothesis-show-statistics")
    else:
        arguments.append(str(pytester.makepyfile(test_fails="def test_fails():\n    assert False\n")))
    result = pytester.runpytest_subprocess(*arguments)
    assert result.ret == (1 if why == "a failure" else 0), result.stdout.str()[-3000:]
    assert (pytester.path / "hypothesis-controller").read_text() == "True"  # (a failure: its summary imported it)
    assert ("Hypothesis Statistics" in result.stdout.str()) == (why == "statistics")
