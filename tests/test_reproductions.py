"""Every target's copy-paste reproduction, executed as written, gives the bits the target returned.

Every adapter in ADAPTERS that runs on the CPU (NumPy's im2col, each framework's plain calls, its
execution modes, oracles, derivatives and child-process variants) runs one check here; its record's
reproduction is executed and its `y` (`g` for a derivative) compared bit for bit with what the
adapter's own `run` returned on the same data. A GPU-only target is listed, and skipped, with why.
A target that runs in a process of its own (Keras' backends, oneDNN) has its reproductions
executed in a fresh interpreter, one per such environment: the pasted text must set what that
process was started with, before the import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance import derivatives, expectations
from conformance.adapters import ADAPTERS, OUTPUT, QUANTITIES, Adapter, ConvCall, Target, Unavailable, Unsupported
from conformance.adapters.base import FrameworkCall
from conformance.adapters.child import InChildProcess
from conformance.cases import Case, load_file
from conformance.judging import prepare
from conformance.records import Record
from conformance.runner import call_params, run_check

CASES = """
[defaults]
derivatives = 2
dtypes = ["float32"]

[[case]]
id = "explicit"
description = "Asymmetric explicit pads, per-axis rate: the pads every API spells differently."
input = { generator = "integers", seed = 1, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 2, low = -2, high = 2, shape = [2, 3, 2, 2] }
rate = [2, 1]
padding = [[1, 2], [0, 1]]

[[case]]
id = "same"
description = "SAME at rate 2, for the APIs that take only SAME/VALID (and the explicit-pads oracle)."
input = { generator = "integers", seed = 3, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 4, low = -2, high = 2, shape = [3, 3, 2, 2] }
rate = 2
padding = "SAME"

[[case]]
id = "same-rate1"
description = "TensorFlow's CPU conv2d gradient refuses rates > 1 (a known divergence): rate 1 for it."
input = { generator = "integers", seed = 5, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 6, low = -2, high = 2, shape = [3, 3, 2, 2] }
padding = "SAME"

[[case]]
id = "depthwise"
description = "For depthwise_conv2d."
input = { generator = "integers", seed = 7, low = -3, high = 3, shape = [1, 7, 6, 2] }
kernel = { generator = "integers", seed = 8, low = -2, high = 2, shape = [3, 3, 1, 4] }
rate = 2
padding = "SAME"
groups = 2

[[case]]
id = "transposed-explicit"
description = "A transposed convolution with asymmetric crops, output_padding, per-axis rate and stride."
op = "conv_transpose"
input = { generator = "integers", seed = 9, low = -3, high = 3, shape = [1, 4, 5, 2] }
kernel = { generator = "integers", seed = 10, low = -2, high = 2, shape = [3, 2, 3, 2] }
rate = [2, 1]
stride = [2, 3]
padding = [[1, 1], [0, 1]]
output_padding = [1, 1]

[[case]]
id = "transposed-same-rate2"
description = "SAME at rate 2, stride 1: atrous_conv2d_transpose, and Keras (which refuses stride > 1 with rate > 1)."
op = "conv_transpose"
input = { generator = "integers", seed = 11, low = -3, high = 3, shape = [1, 4, 5, 2] }
kernel = { generator = "integers", seed = 12, low = -2, high = 2, shape = [3, 3, 3, 2] }
rate = 2
padding = "SAME"

[[case]]
id = "transposed-same-stride2"
description = "SAME at rate 1, stride 2: TensorFlow's CPU conv2d_transpose refuses rates > 1 (a known divergence)."
op = "conv_transpose"
input = { generator = "integers", seed = 13, low = -3, high = 3, shape = [1, 4, 5, 2] }
kernel = { generator = "integers", seed = 14, low = -2, high = 2, shape = [3, 3, 3, 2] }
stride = 2
padding = "SAME"

[[case]]
id = "explicit-1d"
description = "1-D: asymmetric pads at rate 2."
input = { generator = "integers", seed = 21, low = -3, high = 3, shape = [1, 9, 2] }
kernel = { generator = "integers", seed = 22, low = -2, high = 2, shape = [3, 2, 2] }
rate = 2
padding = [[2, 1]]

[[case]]
id = "causal-1d"
description = "1-D causal pads: Keras' Conv1D(padding='causal')."
input = { generator = "integers", seed = 23, low = -3, high = 3, shape = [1, 9, 2] }
kernel = { generator = "integers", seed = 24, low = -2, high = 2, shape = [2, 2, 2] }
rate = 3
padding = "CAUSAL"

[[case]]
id = "same-1d"
description = "1-D SAME at rate 2 (the explicit-pads oracle, and the APIs that take only SAME/VALID)."
input = { generator = "integers", seed = 25, low = -3, high = 3, shape = [1, 9, 2] }
kernel = { generator = "integers", seed = 26, low = -2, high = 2, shape = [3, 2, 2] }
rate = 2
padding = "SAME"

[[case]]
id = "same-rate1-1d"
description = "1-D SAME at rate 1: TensorFlow's CPU conv1d gradient refuses rates > 1 (a known divergence)."
input = { generator = "integers", seed = 27, low = -3, high = 3, shape = [1, 9, 2] }
kernel = { generator = "integers", seed = 28, low = -2, high = 2, shape = [3, 2, 2] }
padding = "SAME"

[[case]]
id = "depthwise-1d"
description = "For DepthwiseConv1D."
input = { generator = "integers", seed = 29, low = -3, high = 3, shape = [1, 9, 2] }
kernel = { generator = "integers", seed = 30, low = -2, high = 2, shape = [3, 1, 4] }
rate = 2
padding = "SAME"
groups = 2

[[case]]
id = "transposed-1d-explicit"
op = "conv_transpose"
input = { generator = "integers", seed = 31, low = -3, high = 3, shape = [1, 5, 2] }
kernel = { generator = "integers", seed = 32, low = -2, high = 2, shape = [3, 3, 2] }
rate = 2
stride = 2
padding = [[1, 2]]
output_padding = 1

[[case]]
id = "transposed-1d-same-stride2"
op = "conv_transpose"
input = { generator = "integers", seed = 33, low = -3, high = 3, shape = [1, 5, 2] }
kernel = { generator = "integers", seed = 34, low = -2, high = 2, shape = [3, 3, 2] }
stride = 2
padding = "SAME"

[[case]]
id = "explicit-3d"
description = "3-D: asymmetric pads, per-axis rate."
input = { generator = "integers", seed = 35, low = -3, high = 3, shape = [1, 5, 4, 4, 2] }
kernel = { generator = "integers", seed = 36, low = -2, high = 2, shape = [2, 2, 2, 2, 2] }
rate = [2, 1, 2]
padding = [[1, 0], [0, 1], [1, 1]]

[[case]]
id = "same-3d"
input = { generator = "integers", seed = 37, low = -3, high = 3, shape = [1, 5, 4, 4, 2] }
kernel = { generator = "integers", seed = 38, low = -2, high = 2, shape = [3, 2, 3, 2, 2] }
rate = [1, 2, 1]
padding = "SAME"

[[case]]
id = "same-rate1-3d"
description = "3-D SAME at rate 1: TensorFlow's own CPU Conv3D refuses rates > 1 (a known divergence)."
input = { generator = "integers", seed = 39, low = -3, high = 3, shape = [1, 5, 4, 4, 2] }
kernel = { generator = "integers", seed = 40, low = -2, high = 2, shape = [3, 2, 3, 2, 2] }
padding = "SAME"

[[case]]
id = "transposed-3d-same-stride2"
op = "conv_transpose"
input = { generator = "integers", seed = 41, low = -3, high = 3, shape = [1, 3, 3, 2, 2] }
kernel = { generator = "integers", seed = 42, low = -2, high = 2, shape = [3, 3, 3, 3, 2] }
stride = 2
padding = "SAME"

[[case]]
id = "transposed-3d-explicit"
description = "Crops torch can state (it crops both sides alike), for torch's 3-D transposed targets."
op = "conv_transpose"
input = { generator = "integers", seed = 43, low = -3, high = 3, shape = [1, 3, 3, 2, 2] }
kernel = { generator = "integers", seed = 44, low = -2, high = 2, shape = [3, 3, 3, 3, 2] }
stride = 2
padding = 1
output_padding = [1, 0, 1]
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    path = tmp_path_factory.mktemp("reproductions") / "r.toml"
    path.write_text(CASES)
    loaded = load_file(path)
    assert not loaded.errors
    return loaded.cases


KNOWN = expectations.load(Path(__file__).parent.parent / "cases" / "expectations.toml")


def _adapter_call(case: Case, adapter: Adapter) -> ConvCall:
    data = prepare(case, "float32").data
    call = ConvCall(data.x, data.w, case.rate, case.stride, case.padding, case.geometry, case.groups, "float32")
    if adapter.quantity == OUTPUT:
        return call
    t = derivatives.tangents(case, "float32")
    return ConvCall(
        data.x, data.w, case.rate, case.stride, case.padding, case.geometry, case.groups, "float32",
        t.cotangent, t.direction_input, t.direction_kernel,
    )  # fmt: skip


def _passing_check(adapter: Adapter, cases: list[Case]) -> tuple[Case, str] | str:
    """(the first case this adapter passes, its reproduction), or why there is none to try."""
    if "cpu" not in adapter.devices:
        return f"{adapter.name} runs on a GPU only; its reproduction is the CPU's twice over"
    try:
        adapter.check_available("cpu")
    except Unavailable as exc:
        return str(exc)
    target = Target(adapter, "cpu", "strict")
    cases = [case for case in cases if adapter.mismatch(case.op, case.rank) is None]
    records: dict[str, Record] = {}
    for case in cases:  # up to the first that passes: each check of a child's target is a round trip
        record = records[case.id] = run_check(case, target, "float32")
        # An oracle passes where both formulations raise (TensorFlow's Conv3D at rate > 1 without
        # oneDNN): that reproduction raises too, and has no bits to compare.
        if record["outcome"] == "pass" and record["output_sha256"] is not None:
            return case, str(record["reproduction"])
    # None passes with an output: why (every record is here now). A pass here is an oracle's
    # agreement that both formulations raise; the rest must be refusals or known divergences.
    if all(r["outcome"] == "unsupported" for r in records.values()):
        return f"unsupported on this machine: {records[cases[0].id]['message']}"
    agreements = [r for r in records.values() if r["outcome"] == "pass"]
    others = [r for r in records.values() if r["outcome"] not in ("pass", "unsupported")]
    known = [expectations.apply(r, KNOWN.entries) for r in others]
    if all(r["outcome"] == "xfail" for r in known):
        explained = [r["message"] for r in agreements + known]
        return f"no pass with an output here; both formulations raise or a known divergence: {explained[0]}"
    raise AssertionError({case_id: (r["outcome"], r["message"]) for case_id, r in records.items()})


def _same_bits(pasted: np.ndarray, adapter: Adapter, case: Case) -> None:
    returned = adapter.run(_adapter_call(case, adapter), "cpu", "strict")
    assert pasted.dtype == returned.dtype and pasted.shape == returned.shape, adapter.name
    np.testing.assert_array_equal(pasted.view(np.uint32), returned.view(np.uint32), adapter.name)  # every bit


def _result_name(adapter: Adapter) -> str:
    return "y" if adapter.quantity == OUTPUT else "g"


IN_PROCESS = [adapter for adapter in ADAPTERS if not isinstance(adapter, InChildProcess)]


def _described(adapter: Adapter) -> FrameworkCall | None:
    """The adapter that describes `adapter`'s call as a program (a child's target: the one it runs)."""
    inner = adapter.inner if isinstance(adapter, InChildProcess) else adapter
    return inner if isinstance(inner, FrameworkCall) else None


DESCRIBED = [adapter for adapter in ADAPTERS if _described(adapter) is not None]


def _other_data(call: ConvCall) -> ConvCall:
    """The same call on other tensors of the same shapes and dtypes, one value of each not finite."""
    changed: dict[str, np.ndarray] = {}
    for name in ("x", "w", "cotangent", "direction_input", "direction_kernel"):
        value = getattr(call, name)
        if value is not None:
            other = (value * 2 - 1).astype(value.dtype)
            other.flat[0] = np.inf
            changed[name] = other
    return dataclasses.replace(call, **changed)


def _source(adapter: FrameworkCall, call: ConvCall) -> str:
    try:
        return adapter.describe(call, "cpu", "strict").source()
    except Unsupported as exc:
        return f"refused: {exc}"


@pytest.mark.parametrize("adapter", DESCRIBED, ids=lambda a: a.name)
def test_a_description_depends_on_the_call_never_on_its_data(adapter: Adapter, cases: list[Case]) -> None:
    """A program is made once per call signature and reused on other data (`FrameworkCall.program`:
    the large tier draws each geometry 130 times), which is sound only while no description reads the
    tensors' values: data a framework cannot take is refused in `refuse`, right before each call."""
    described = _described(adapter)
    assert described is not None
    compared = 0
    for case in cases:
        if adapter.mismatch(case.op, case.rank) or adapter.unsupported_reason(call_params(case, "float32")):
            continue
        call = _adapter_call(case, adapter)
        other = _other_data(call)
        assert _source(described, call) == _source(described, other), (adapter.name, case.id)
        if not _source(described, call).startswith("refused"):
            assert described.program(call, "cpu", "strict") is described.program(other, "cpu", "strict")
            changed = dataclasses.replace(call, groups=call.groups + 1)  # any other setting: another program
            assert described.program(changed, "cpu", "strict") is not described.program(call, "cpu", "strict")
        compared += 1
    assert compared, f"no case here reaches {adapter.name}"


def test_a_check_s_program_is_looked_up_once_and_not_held_past_its_run(
    cases: list[Case], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check asks for its program twice, for its reproduction and its run: the second finds it by
    the call's identity without a signature, another call (even of the same signature) looks it up,
    and the run lets the call go (a large case's tensors are not held until the next check)."""
    from conformance.adapters import base
    from conformance.adapters.numpy import NumpyIm2col

    adapter = next(a for a in ADAPTERS if isinstance(a, NumpyIm2col))
    case = next(c for c in cases if not adapter.mismatch(c.op, c.rank))
    call, other = _adapter_call(case, adapter), _other_data(_adapter_call(case, adapter))
    signatures: list[ConvCall] = []
    signature = ConvCall.signature
    monkeypatch.setattr(ConvCall, "signature", lambda self: signatures.append(self) or signature(self))
    source = adapter.reproduction(call, "cpu", "strict")
    assert signatures == [call]
    assert adapter.program(call, "cpu", "strict").source() == source and signatures == [call]
    assert adapter.program(other, "cpu", "strict").source() == source and signatures == [call, other]
    adapter.reproduction(call, "cpu", "strict")
    adapter.run(call, "cpu", "strict")
    assert signatures == [call, other, call] and base._last_program[0] is None


SHARED_GEOMETRY = """
[defaults]
dtypes = ["float32"]
rate = 2
padding = "SAME"

[[case]]
id = "finite"
input = { generator = "uniform", seed = 1, low = 0.5, high = 1.0, shape = [1, 9, 9, 1] }
kernel = { generator = "uniform", seed = 2, low = 0.5, high = 1.0, shape = [3, 3, 1, 1] }

[[case]]
id = "infinite"
kernel = { generator = "uniform", seed = 4, low = 0.5, high = 1.0, shape = [3, 3, 1, 1] }
[case.input]  # (one line would be too long)
generator = "uniform"
seed = 3
low = 0.5
high = 1.0
shape = [1, 9, 9, 1]
set = [{at = [0, 4, 4, 0], value = inf}]
"""


def test_data_a_target_refuses_is_refused_after_a_check_of_the_same_geometry(tmp_path: Path) -> None:
    """The zero-insertion oracle cannot tell inf * an inserted zero from the dilated convolution:
    it refuses non-finite data at each call, though its program is the one the finite check made."""
    pytest.importorskip("torch")
    (tmp_path / "shared.toml").write_text(SHARED_GEOMETRY)
    finite, infinite = load_file(tmp_path / "shared.toml").cases
    target = next(Target(a, "cpu", "strict") for a in ADAPTERS if a.name == "torch.conv2d@zero-inserted")
    assert run_check(finite, target, "float32")["outcome"] == "pass"
    record = run_check(infinite, target, "float32")
    assert record["outcome"] == "unsupported" and "non-finite data" in record["message"], record["message"]


@pytest.mark.parametrize("adapter", IN_PROCESS, ids=lambda a: a.name)
def test_the_reproduction_gives_the_bits_the_target_returned(adapter: Adapter, cases: list[Case]) -> None:
    found = _passing_check(adapter, cases)
    if isinstance(found, str):
        pytest.skip(found)
    case, reproduction = found
    namespace: dict[str, Any] = {}
    exec(reproduction, namespace)  # the text a user would paste
    value = namespace[_result_name(adapter)]
    _same_bits(np.asarray(value.detach() if hasattr(value, "detach") else value), adapter, case)


def _environment_id(environment: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{name}={value}" for name, value in environment)


CHILD_ENVIRONMENTS = sorted(
    {tuple(sorted(a.child_environment.items())) for a in ADAPTERS if isinstance(a, InChildProcess)}
)

# Runs each pasted reproduction in a fresh namespace of one fresh interpreter, saving its result.
# Results alone would not show a missing setting (integer data gives the same bits on every
# backend), so it also reports the variables each reproduction left set.
PASTE_ALL = """
import json, os, sys
import numpy as np
sources, variables = json.load(open(sys.argv[1]))
results, settings = {}, {}
for name, (source, result) in sources.items():
    namespace = {}
    exec(source, namespace)
    settings[name] = {variable: os.environ.get(variable) for variable in variables}
    value = namespace[result]
    value = value.detach() if hasattr(value, "detach") else value
    results[name] = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
np.savez(sys.argv[2], **results)
json.dump(settings, open(sys.argv[3], "w"))
"""


@pytest.mark.parametrize("environment", CHILD_ENVIRONMENTS, ids=_environment_id)
def test_reproductions_of_child_process_targets_in_a_fresh_interpreter(
    environment: tuple[tuple[str, str], ...], cases: list[Case], tmp_path: Path
) -> None:
    adapters = [
        a
        for a in ADAPTERS
        if isinstance(a, InChildProcess) and tuple(sorted(a.child_environment.items())) == environment
    ]
    checks: dict[str, tuple[Adapter, Case, str]] = {}
    skipped = []
    for adapter in adapters:
        found = _passing_check(adapter, cases)
        if isinstance(found, str):
            skipped.append(found)
        else:
            checks[adapter.name] = (adapter, *found)
    if not checks:
        pytest.skip("; ".join(sorted(set(skipped))))
    sources = {name: (source, _result_name(adapter)) for name, (adapter, _, source) in checks.items()}
    (tmp_path / "sources.json").write_text(json.dumps([sources, [name for name, _ in environment]]))
    # The interpreter starts without the environment: the reproduction must set it itself.
    files = [str(tmp_path / name) for name in ("sources.json", "pasted.npz", "settings.json")]
    subprocess.run(
        [sys.executable, "-c", PASTE_ALL, *files], check=True,
        env={k: v for k, v in os.environ.items() if k not in dict(environment)},
    )  # fmt: skip
    pasted = np.load(tmp_path / "pasted.npz")
    settings = json.loads((tmp_path / "settings.json").read_text())
    for name, (adapter, case, _) in checks.items():
        assert settings[name] == dict(environment), name
        _same_bits(pasted[name], adapter, case)


def test_every_target_kind_is_covered() -> None:
    """The list above is ADAPTERS itself, so a new adapter is covered the day it is added."""
    names = {a.name for a in ADAPTERS}
    assert "numpy.im2col" in names and "tensorflow.conv2d@onednn-on" in names
    assert {f"torch.conv2d@{q}" for q in QUANTITIES} <= names
    assert "keras-jax.Conv2D@grad-kernel" in names
    assert {"torch.conv_transpose2d@grad-kernel", "jax.conv_general_dilated@lhs-dilation"} <= names
    assert set(IN_PROCESS) | {a for a in ADAPTERS if isinstance(a, InChildProcess)} == set(ADAPTERS)


LARGE_TIER = """
tier = "large"

[defaults]
dtypes = ["float32"]

[[sweep]]
id = "draws"
seed = 5
replicates = 2
channels = 2
out_channels = 2
size = [9, 9]
kernel_size = 3
rate = 2
[sweep.axes]
stride = [1, 2]
"""


def _run_large_tier(directory: Path, adapters: list[str], *options: str) -> tuple[list[Record], str]:
    """LARGE_TIER through NumPy's targets and the given fault adapters, in a project of its own:
    the run's records, and its output."""
    from tests.projects import child_environment, write_project

    write_project(directory, adapters, {"large.toml": LARGE_TIER})
    # --conformance-target: the other targets are never collected (-k would also select the checks).
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "large", *options]
    command += ["--conformance-target=numpy.*", "--conformance-target=faulty.*"]
    command += ["--expectations=none", "--conformance-json=out/results.json", "--conformance-html=none"]
    run = subprocess.run(command, cwd=directory, env=child_environment(), capture_output=True, text=True, timeout=600)
    assert (directory / "out" / "results.json").exists(), run.stdout[-3000:]
    records: list[Record] = json.loads((directory / "out" / "results.json").read_text())["results"]
    return records, run.stdout[-3000:]


def test_routine_large_tier_records_are_lean_and_reproduce_writes_what_they_left_out(tmp_path: Path) -> None:
    """A large-tier check that passes (or was not run) leaves its reproduction out of its record;
    a failing one keeps it. `python -m conformance reproduce` writes a lean record's."""
    records, output = _run_large_tier(tmp_path, ["StrideRateBug"])
    directory = tmp_path
    passed = [r for r in records if r["outcome"] == "pass"]
    failed = [r for r in records if r["outcome"] == "mismatch"]
    assert passed and failed, output
    assert all(r["reproduction"] == "" for r in passed)
    assert all(r["reproduction"] and r["target"] == "faulty.stride_rate_bug-cpu" for r in failed)

    lean = next(r for r in passed if r["target"] == "numpy.im2col-cpu")
    again = [sys.executable, "-m", "conformance", "reproduce", lean["case"], lean["target"], lean["dtype"]]
    printed = subprocess.run(again, cwd=directory, capture_output=True, text=True, timeout=300)
    assert printed.returncode == 0, printed.stderr
    assert f"# case {lean['case']} (cases/large.toml), dtype float32" in printed.stdout
    unknown = subprocess.run([*again[:5], "faulty.stride_rate_bug-cpu", "float32"], cwd=directory, capture_output=True)
    assert unknown.returncode == 2 and b"no target" in unknown.stderr


def test_a_large_tier_check_whose_worker_died_keeps_its_reproduction(tmp_path: Path) -> None:
    """A large-tier check makes its reproduction only once its outcome keeps one: a crash's, which
    its worker could not report, is made by the controller, the same as a failure's in the worker."""
    records, output = _run_large_tier(tmp_path, ["Segfault", "StrideRateBug"], "-n", "2", "--conformance-crash-limit=2")
    crashed = [r for r in records if r["outcome"] == "crash"]
    failed = [r for r in records if r["outcome"] == "mismatch"]
    assert len(crashed) == 2 and failed, output
    for record in crashed + failed:
        fault = "Segfault" if record["outcome"] == "crash" else "StrideRateBug"
        assert f"# case {record['case']} (cases/large.toml), dtype {record['dtype']}" in record["reproduction"]
        assert record["reproduction"].endswith(f"# fault injection: tests/fault_adapters.py, {fault}")
    assert all(r["reproduction"] == "" for r in records if r["outcome"] in ("pass", "skip"))


def test_a_check_told_not_to_reproduce_makes_its_reproduction_only_when_asked(
    cases: list[Case], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`call_check(reproduce=False)` (a large-tier batch's) calls the framework with no reproduction
    made; `with_reproduction` adds the one it would have carried, or says why it cannot."""
    from conformance import check_records, runner
    from conformance.adapters import all_targets

    target = next(t for t in all_targets() if t.id == "numpy.im2col-cpu")
    case = cases[0]
    called = runner.call_check(case, target, "float32", reproduce=False)
    record = runner.judge_answers([called])[0] if isinstance(called, runner.Answered) else called
    assert record["outcome"] == "pass" and record["reproduction"] == "" and record["input_sha256"]
    assert not check_records.wants_reproduction(record)  # (routine: none kept)
    record["outcome"] = "mismatch"
    assert check_records.wants_reproduction(record)
    assert (
        runner.with_reproduction(record, case, target, "float32")["reproduction"]
        == run_check(case, target, "float32")["reproduction"]
    )

    def fails(*args: Any) -> str:
        raise ValueError("no source")

    monkeypatch.setattr(runner, "reproduction_of", fails)
    written = runner.with_reproduction(dict(record), case, target, "float32")["reproduction"]
    assert written == "# the reproduction could not be written: ValueError: no source\n"


@pytest.mark.parametrize("name", ["numpy.im2col-cpu", "torch.conv2d@grad-kernel-cpu"])
def test_reproduce_writes_what_a_record_holds(name: str, cases: list[Case]) -> None:
    """`reproduction_of` (the reproduce command) and a run's record agree, derivatives included."""
    from conformance import runner
    from conformance.adapters import all_targets

    target = next((t for t in all_targets() if t.id == name), None)
    if target is None:
        pytest.skip(f"{name} is not a target here")
    case = cases[0]
    record = run_check(case, target, "float32")
    assert record["reproduction"] and record["reproduction"] == runner.reproduction_of(case, target, "float32")
