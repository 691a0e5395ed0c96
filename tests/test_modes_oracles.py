"""Equivalence oracles are judged against their framework's primary call, not the reference;
execution modes run the real frameworks; the oneDNN variants really run in their own process;
the extended tier is collected only when asked for."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance import compare, judging, machine, reference, runner
from conformance.adapters import ADAPTERS, Adapter, ConvCall, Target, Unsupported
from conformance.adapters.base import ProcessDied
from conformance.adapters.oracles import zero_inserted_kernel
from conformance.cases import load_file
from conformance.frameworks import Framework
from tests.projects import child_environment, write_project

CASES = """
[[case]]
id = "plain"
dtypes = ["float32"]
input = { generator = "normal", seed = 1, shape = [1, 9, 9, 2] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 2] }
rate = 2
padding = "SAME"

[[case]]
id = "valid"
dtypes = ["float32"]
input = { generator = "normal", seed = 1, shape = [1, 9, 9, 2] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 2, 3] }
rate = 2

[[case]]
id = "no-output"
dtypes = ["float32"]
input = { generator = "normal", seed = 1, shape = [1, 4, 4, 1] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 1, 1] }
rate = 2
"""


@pytest.fixture
def cases(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "oracle.toml"
    path.write_text(CASES)
    return {case.id: case for case in load_file(path, tmp_path).cases}


class Truth(Adapter):
    """A primary call that returns the float64 reference rounded to the case dtype."""

    framework = Framework("fake", "a fake framework")
    op = "conv"
    devices = ("cpu",)
    offset = 0.0
    raises = False

    def check_available(self, device: str) -> None:
        return None

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        if self.raises:
            raise ValueError("the primary refuses")
        y = reference.conv_resolved(call.x.astype(np.float64), call.w.astype(np.float64), call.geometry, call.groups)
        return (y + self.offset).astype(call.x.dtype)

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return "# fake"

    def environment(self) -> dict[str, Any]:
        return {}


def _oracle(primary: Adapter, offset: float = 0.0, raises: bool = False) -> Adapter:
    oracle = Truth()
    oracle.variant, oracle.baseline, oracle.offset, oracle.raises = "alt", primary, offset, raises
    return oracle


def _check(case: Any, adapter: Adapter) -> dict[str, Any]:
    return runner.run_check(case, Target(adapter, "cpu", "strict"), "float32")


def test_an_oracle_is_judged_against_its_baseline_not_the_reference(cases: dict[str, Any]) -> None:
    wrong_primary = Truth()
    wrong_primary.offset = 1.0  # far from the reference
    agreeing = _check(cases["plain"], _oracle(wrong_primary, offset=1.0))
    assert agreeing["outcome"] == "pass", agreeing["message"]
    assert agreeing["baseline"] == "fake.conv" and agreeing["variant"] == "alt"
    assert "bitwise equal" in agreeing["message"]
    # The same output, judged as a primary target, is far off the reference.
    assert _check(cases["plain"], wrong_primary)["outcome"] == "mismatch"


def test_an_oracle_that_differs_from_its_baseline_fails(cases: dict[str, Any]) -> None:
    record = _check(cases["plain"], _oracle(Truth(), offset=1e-3))
    assert record["outcome"] == "mismatch"
    assert record["message"].startswith("against fake.conv:")


def test_an_oracle_within_twice_the_bound_passes(cases: dict[str, Any]) -> None:
    # One float32 ulp at 1.0 is 1.2e-7: beyond the bound of nothing, well inside 2x gamma_18 * S.
    record = _check(cases["plain"], _oracle(Truth(), offset=1e-7))
    assert record["outcome"] == "pass", record["message"]


def test_one_formulation_raising_is_a_divergence(cases: dict[str, Any]) -> None:
    assert _check(cases["plain"], _oracle(Truth(), raises=True))["outcome"] == "error"
    refusing = Truth()
    refusing.raises = True
    record = _check(cases["plain"], _oracle(refusing))
    assert record["outcome"] == "shape" and "fake.conv raised" in record["message"]
    both = _check(cases["plain"], _oracle(refusing, raises=True))
    assert both["outcome"] == "pass" and "both formulations raise" in both["message"]


class Refused(Truth):
    """`Truth`, for a framework whose API cannot state any geometry: every check is unsupported."""

    def unsupported_reason(self, call_params: Any) -> str | None:
        return "this framework's API cannot state the geometry"


def test_a_batch_s_planned_record_becomes_the_check_s_record_as_a_new_one_would_be(cases: dict[str, Any]) -> None:
    """A batch makes each check's record before running it (its journal's plan); the check finishes
    that record in place (`planned`) rather than making another, and it is the record the check makes
    alone: the same fields in the same order, with the same values (but the time each took)."""
    from conformance import timing
    from conformance.check_records import make_record
    from conformance.compare import Outcome, Verdict

    volatile = {"duration_s", *timing.KINDS}
    for adapter in (Truth(), Refused()):
        target = Target(adapter, "cpu", "strict")
        alone = runner.run_check(cases["plain"], target, "float32")
        plan = make_record(cases["plain"], target, "float32", Verdict(Outcome.SKIP, "not run"))
        settled = runner.unsupported_record(cases["plain"], target, "float32", None, plan)
        if settled is None:
            answered = runner.call_check(cases["plain"], target, "float32", planned=plan)
            assert isinstance(answered, runner.Answered)
            settled = runner.judge_answers([answered])[0]
        assert settled is plan, "the planned record is the check's record, not a copy"
        assert list(settled) == list(alone)
        assert {k: v for k, v in settled.items() if k not in volatile} == {
            k: v for k, v in alone.items() if k not in volatile
        }
        assert settled["outcome"] == ("pass" if type(adapter) is Truth else "unsupported")


JUDGED_FIELDS = ("message", "max_abs_error", "max_rel_error", "max_ulp", "error_ratio", "worst", "bounds")


def test_an_oracle_s_answers_judged_together_get_the_verdicts_each_gets_alone(
    cases: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch judges an oracle target's answers together (`runner.judge_answers`, one stack against
    its primary formulation's outputs): each record must say what the oracle's check says alone,
    bitwise equal, within twice the bound, beyond it, against a primary that raised or misshaped."""
    stacked: list[int] = []
    together = compare._within_bound_together
    monkeypatch.setattr(compare, "_within_bound_together", lambda e, g: stacked.append(len(e)) or together(e, g))
    wrong_primary, refusing = Truth(), Truth()
    wrong_primary.offset, refusing.raises = 1.0, True
    oracles = [
        (_oracle(wrong_primary, offset=1.0), True),
        (_oracle(Truth(), offset=1e-3), True),  # (beyond the bound: judged again, alone)
        (_oracle(Truth(), offset=1e-7), True),
        (_oracle(refusing), False),
        (_oracle(MisShapen()), True),  # (its input's shape is the plain draws' output's: misshapen on one)
    ]
    for oracle, stackable in oracles:
        target = Target(oracle, "cpu", "strict")
        draws = [cases["plain"], cases["valid"], cases["plain"]]
        answered = [runner.call_check(case, target, "float32") for case in draws]
        assert all(isinstance(a, runner.Answered) and a.base is not None for a in answered)
        stacked.clear()
        records = runner.judge_answers(answered)  # type: ignore[arg-type]
        assert stacked == ([2] if stackable else []), oracle  # (the two draws of one shape)
        for a, record in zip(answered, records, strict=True):
            assert isinstance(a, runner.Answered)
            expected = judging.expected_answer(a.case, a.dtype, a.target, a.prepared)
            alone = judging.judge_against_baseline(a.baseline_name, a.base, expected, a.got, None)  # type: ignore[arg-type]
            assert {k: record[k] for k in JUDGED_FIELDS} == {k: getattr(alone, k) for k in JUDGED_FIELDS}
            assert record["outcome"] == alone.outcome.value
            assert record["output_sha256"] == judging.output_hash(a.got)


class MisShapen(Truth):
    """A primary call that returns its input (oneDNN's Conv2D on a batch of 0 returns the input's shape)."""

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        return call.x.copy()


def test_an_oracle_whose_baseline_has_the_wrong_shape_is_judged_not_a_harness_error(cases: dict[str, Any]) -> None:
    """No bound relates two tensors of different shapes: the same wrong answer agrees with the
    primary, a right one or an exception is the framework disagreeing with itself (it was the
    harness's own "operands could not be broadcast" error on an AVX-512 machine)."""
    agreeing = _check(cases["valid"], _oracle_of(MisShapen(), MisShapen()))
    assert agreeing["outcome"] == "pass" and "whose shape [1, 9, 9, 2] is wrong ([1, 5, 5, 3]" in agreeing["message"]
    right = _check(cases["valid"], _oracle(MisShapen()))
    assert right["outcome"] == "shape" and right["got_shape"] == [1, 5, 5, 3]
    assert right["message"].startswith("fake.conv returned shape [1, 9, 9, 2] ([1, 5, 5, 3] was due)")
    refusing = _check(cases["valid"], _oracle(MisShapen(), raises=True))
    assert refusing["outcome"] == "shape" and "this formulation raised ValueError" in refusing["message"]


def _oracle_of(primary: Adapter, oracle: Truth) -> Adapter:
    oracle.variant, oracle.baseline = "alt", primary
    return oracle


def test_without_a_valid_output_an_oracle_follows_the_conformance_rule(cases: dict[str, Any]) -> None:
    record = _check(cases["no-output"], _oracle(Truth(), raises=True))
    assert record["outcome"] == "expected-error"


def test_unsupported_raised_from_run_is_unsupported(cases: dict[str, Any]) -> None:
    class Refuses(Truth):
        def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
            raise Unsupported("not expressible for this data")

    record = _check(cases["plain"], Refuses())
    assert record["outcome"] == "unsupported" and "not expressible" in record["message"]


def test_zero_inserted_kernel() -> None:
    w = np.arange(1, 7, dtype=np.float32).reshape(2, 3, 1, 1)
    dilated = zero_inserted_kernel(w, (3, 2))
    assert dilated.shape == (4, 5, 1, 1)
    np.testing.assert_array_equal(dilated[::3, ::2], w)
    assert dilated.sum() == w.sum() and np.count_nonzero(dilated) == 6


def _real(name: str) -> Adapter:
    return next(adapter for adapter in ADAPTERS if adapter.name == name)


@pytest.mark.parametrize(
    "name",
    [
        "torch.conv2d@layer",
        "torch.conv2d@zero-inserted",
        "torch.conv2d@channels_last",
        "torch.conv2d@explicit-pads",
        "tensorflow.conv2d@function",
        "tensorflow.conv2d@layer",
        "tensorflow.atrous_conv2d@equals-conv2d",
        "tensorflow.conv2d@zero-inserted",
        "tensorflow.conv2d@explicit-pads",
        "jax.conv_general_dilated@jit",
        "jax.conv_general_dilated@zero-inserted",
        "jax.conv_general_dilated@nchw",
        "jax.conv_general_dilated@explicit-pads",
    ],
)
def test_every_mode_and_oracle_runs_its_framework_and_reproduces(name: str, cases: dict[str, Any]) -> None:
    adapter = _real(name)
    pytest.importorskip({"torch": "torch", "tensorflow": "tensorflow", "jax": "jax"}[adapter.framework.name])
    record = _check(cases["plain"], adapter)
    assert record["outcome"] == "pass", record["message"]
    # The reproduction is real code: run it and get the same bits.
    namespace: dict[str, Any] = {}
    exec(record["reproduction"], namespace)
    got = np.asarray(namespace["y"])
    call_output = adapter.run(
        ConvCall(
            x=judging.prepare(cases["plain"], "float32").data.x,
            w=judging.prepare(cases["plain"], "float32").data.w,
            rate=(2, 2),
            stride=(1, 1),
            padding="SAME",
            geometry=cases["plain"].geometry,
            groups=1,
            dtype="float32",
        ),
        "cpu",
        "strict",
    )
    np.testing.assert_array_equal(got, call_output)


def test_onednn_variants_run_in_their_own_process_unless_this_one_is_already_so(cases: dict[str, Any]) -> None:
    """The variant whose setting differs from this process's TensorFlow runs in a child; the one
    this process already is runs here (a child would import TensorFlow again for the same thing)."""
    pytest.importorskip("tensorflow")
    from conformance.adapters import child
    from conformance.adapters.tensorflow import onednn_enabled

    variants = {"1": _real("tensorflow.conv2d@onednn-on"), "0": _real("tensorflow.conv2d@onednn-off")}
    for flag, adapter in variants.items():
        assert adapter.devices == ("cpu",)
        assert _check(cases["plain"], adapter)["outcome"] == "pass"
        assert adapter.environment()["flags"]["onednn_enabled"] is (flag == "1")
    here = "1" if onednn_enabled() else "0"
    elsewhere = "0" if here == "1" else "1"
    assert variants[here].runs_here() and not variants[elsewhere].runs_here()
    assert variants[elsewhere].environment()["flags"]["TF_ENABLE_ONEDNN_OPTS"] == elsewhere
    by_setting = {key[1]: found for key, found in child.children().items() if key[0] == "tensorflow"}
    assert (("TF_ENABLE_ONEDNN_OPTS", here),) not in by_setting
    # A dead child is reported on the check that ran in it and the next check starts a new one.
    by_setting[(("TF_ENABLE_ONEDNN_OPTS", elsewhere),)].process.kill()
    call = ConvCall(
        x=judging.prepare(cases["plain"], "float32").data.x, w=judging.prepare(cases["plain"], "float32").data.w,
        rate=(2, 2), stride=(1, 1), padding="SAME", geometry=cases["plain"].geometry, groups=1, dtype="float32",
    )  # fmt: skip
    with pytest.raises(ProcessDied, match=rf"TF_ENABLE_ONEDNN_OPTS={elsewhere} process died \(exit signal SIGKILL\)"):
        variants[elsewhere].run(call, "cpu", "strict")
    for adapter in variants.values():
        assert _check(cases["plain"], adapter)["outcome"] == "pass"


@pytest.mark.parametrize("setting", ["1", "0"])
def test_which_onednn_variant_needs_a_child_follows_this_process_setting(setting: str) -> None:
    """Whatever the CPU's default, a process started with TF_ENABLE_ONEDNN_OPTS set runs that
    variant itself and the other in a child, and both compute."""
    pytest.importorskip("tensorflow")
    script = (
        "import numpy as np\n"
        "from conformance.adapters import ADAPTERS, child\n"
        "from conformance.adapters.base import ConvCall\n"
        "from conformance.semantics import geometry\n"
        "variants = {flag: next(a for a in ADAPTERS if a.name == f'tensorflow.conv2d@onednn-{name}')\n"
        "            for flag, name in (('1', 'on'), ('0', 'off'))}\n"
        "x, w = np.ones((1, 5, 5, 1), np.float32), np.ones((3, 3, 1, 1), np.float32)\n"
        "call = ConvCall(x=x, w=w, rate=(2, 2), stride=(1, 1), padding='SAME', groups=1, dtype='float32',\n"
        "                geometry=geometry('SAME', (5, 5), (3, 3), (2, 2), (1, 1)))\n"
        "for flag, adapter in variants.items():\n"
        "    adapter.check_available('cpu')\n"
        "    assert adapter.run(call, 'cpu', 'strict')[0, 2, 2, 0] == 9.0\n"
        "    assert adapter.environment()['flags']['onednn_enabled'] is (flag == '1')\n"
        "print(sorted(f for f, a in variants.items() if a.runs_here()),\n"
        "      sorted(dict(key[1])['TF_ENABLE_ONEDNN_OPTS'] for key in child.children()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=child_environment(TF_ENABLE_ONEDNN_OPTS=setting),
    )
    assert done.returncode == 0, done.stderr
    other = "0" if setting == "1" else "1"
    assert done.stdout.split("\n")[-2] == f"['{setting}'] ['{other}']"


def test_a_child_that_dies_in_the_call_is_a_crash_not_an_error(cases: dict[str, Any]) -> None:
    """Even where no valid output exists, where a raised error would be conformant."""
    from conformance.adapters.child import InChildProcess
    from tests.fault_adapters import Segfault

    in_child = InChildProcess(Segfault(), "in-child", {"CONFORMANCE_TEST_CHILD": "segfault"}, devices=("cpu",))
    for case in ("plain", "no-output"):
        record = _check(cases[case], in_child)
        assert record["outcome"] == "crash", record
        assert "CONFORMANCE_TEST_CHILD=segfault process died (exit signal SIGSEGV)" in record["message"]
    assert record["reproduction"].splitlines()[-2:] == [
        "import os; os.environ['CONFORMANCE_TEST_CHILD'] = 'segfault'",
        "# fault injection: tests/fault_adapters.py, Segfault",
    ]


def test_a_child_is_asked_whether_it_can_run_a_target_once_per_process(
    cases: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later checks go straight to the call; a replacement child is asked again (it loads the
    framework again, and that is timed as loading)."""
    from conformance.adapters import child

    environment = {"CONFORMANCE_TEST_CHILD": "asked-once"}
    in_child = child.InChildProcess(Truth(), "in-child", environment, devices=("cpu",))
    asked: list[str] = []
    request = child.Child.request

    def counting(self: child.Child, message: Any) -> Any:
        if isinstance(message, child.CheckAvailable | child.Run):  # (not the runtime facts, asked once)
            asked.append(type(message).__name__)
        return request(self, message)

    monkeypatch.setattr(child.Child, "request", counting)
    for _ in range(3):
        assert _check(cases["plain"], in_child)["outcome"] == "pass"
    assert asked == ["CheckAvailable", "Run", "Run", "Run"]
    running = child.children()[("fake", tuple(environment.items()))]
    running.process.kill()
    running.process.wait()
    assert _check(cases["plain"], in_child)["outcome"] == "pass"
    assert asked[4:] == ["CheckAvailable", "Run"]


def test_a_child_unpickles_each_adapter_once_and_its_requests_share_it() -> None:
    """Every request carries its adapter; the child makes one object per distinct adapter, so what it
    keeps per adapter and call signature (`FrameworkCall.program`) is found by its next request."""
    from conformance.adapters import child

    numpy_call, torch_call = (next(a for a in ADAPTERS if a.name == name) for name in ("numpy.im2col", "torch.conv2d"))
    stream = io.BytesIO()
    for adapter in (numpy_call, numpy_call, torch_call):
        child.write_message(stream, child.CheckAvailable(adapter, "cpu"))
    stream.seek(0)
    received = [child.read_message(stream).adapter for _ in range(3)]
    assert received[0] is received[1] and received[0] is not numpy_call  # (a copy, made once)
    assert received[2] is not received[0] and received[2].name == "torch.conv2d"


def test_a_child_target_never_loads_its_framework_in_the_parent() -> None:
    pytest.importorskip("tensorflow")
    # (the variant this machine's TensorFlow is not: the other runs in the parent, by design)
    on = machine.predicted_facts("tensorflow", machine.this_cpu(), os.environ)["onednn_enabled"]
    other = "off" if on else "on"
    script = (
        "import sys\n"
        "from conformance.adapters import ADAPTERS\n"
        f"adapter = next(a for a in ADAPTERS if a.name == 'tensorflow.conv2d@onednn-{other}')\n"
        "adapter.check_available('cpu')\n"
        f"assert adapter.environment()['flags']['onednn_enabled'] is {other == 'on'}\n"
        "assert 'tensorflow' not in sys.modules, 'the parent imported TensorFlow'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_environment())
    assert done.returncode == 0, done.stderr


def test_a_child_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    script = (
        "import os, sys, time\n"
        "from conformance.adapters import ADAPTERS, child\n"
        "adapter = next(a for a in ADAPTERS if a.name == 'tensorflow.conv2d@onednn-off')\n"
        "adapter.check_available('cpu')\n"
        "print(next(iter(child.children().values())).process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    # (oneDNN on in the parent: the onednn-off variant runs in a child whatever the CPU's default)
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env=child_environment(TF_ENABLE_ONEDNN_OPTS="1"),
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(100):  # the kernel delivers PR_SET_PDEATHSIG at once; allow for a loaded machine
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            break  # dead, waiting to be reaped by init
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        raise AssertionError("the child outlived its killed parent")


def test_the_extended_tier_is_collected_only_when_asked(tmp_path: Path) -> None:
    sweep = """
[[sweep]]
id = "small"
seed = 1
dtypes = ["float32"]
[sweep.axes]
size = [5]
kernel_size = [1, 3]

[[sweep]]
id = "big"
tier = "extended"
seed = 2
dtypes = ["float32"]
[sweep.axes]
size = [6, 7, 8]
kernel_size = [1, 3]
"""
    project = write_project(tmp_path, ["Slow"], {"tiers.toml": sweep})

    def collected(*options: str, marker: str = "paced") -> list[str]:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", marker, *options],
            cwd=project,
            env=child_environment(),
            capture_output=True,
            text=True,
        )
        return [line for line in result.stdout.splitlines() if "::" in line]

    default = collected()
    assert len(default) == 2 and all("small-" in item for item in default)
    extended = collected("--conformance-tier", "extended")
    assert len(extended) == 8 and sum("big-" in item for item in extended) == 6
    assert len(collected("--conformance-tier", "extended", marker="paced and not extended")) == 2


def test_the_report_tells_variants_apart(cases: dict[str, Any], tmp_path: Path) -> None:
    from conformance.report import embedded_data, write_report
    from conformance.results import ResultsWriter
    from conformance.run_environment import base_environment

    writer = ResultsWriter(tmp_path / "results.json")
    writer.add(_check(cases["plain"], Truth()))
    writer.add(_check(cases["plain"], _oracle(Truth())))
    write_report(writer.finish(base_environment(), ["test"]), tmp_path / "index.html")
    columns = embedded_data((tmp_path / "index.html").read_text())["columns"]
    assert sorted(column["variant"] for column in columns) == ["", "alt"]


GRAPH_CASES = """
[defaults]
dtypes = ["float32"]
rate = 2
padding = "SAME"
groups = 2

[[case]]
id = "multiplier1"
input = { generator = "normal", seed = 1, shape = [1, 8, 8, 2] }
kernel = { generator = "normal", seed = 2, shape = [3, 3, 1, 2] }

[[case]]
id = "multiplier2"
input = { generator = "normal", seed = 3, shape = [1, 8, 8, 2] }
kernel = { generator = "normal", seed = 4, shape = [3, 3, 1, 4] }

[[case]]
id = "multiplier2-other-data"
input = { generator = "normal", seed = 5, shape = [1, 8, 8, 2] }
kernel = { generator = "normal", seed = 6, shape = [3, 3, 1, 4] }
"""


def test_graph_modes_reuse_a_traced_graph_only_for_the_same_shapes(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    from conformance.adapters import program

    (tmp_path / "g.toml").write_text(GRAPH_CASES)
    cases = {c.id: c for c in load_file(tmp_path / "g.toml", tmp_path).cases}
    targets = [
        Target(a, "cpu", "strict")
        for a in ADAPTERS
        if a.name in ("tensorflow.depthwise_conv2d@function", "tensorflow.depthwise_conv2d@layer")
    ]
    assert len(targets) == 2
    program.clear_cache()
    for name in ("multiplier1", "multiplier2"):  # same geometry, other kernel shape: a graph of its own
        for target in targets:
            record = runner.run_check(cases[name], target, "float32")
            assert record["outcome"] == "pass", record["message"]
    assert program.cached_values() == 4
    for target in targets:  # new data, same shapes: the traced graph answers, and answers right
        assert runner.run_check(cases["multiplier2-other-data"], target, "float32")["outcome"] == "pass"
    assert program.cached_values() == 4
