"""The runtime facts that decide known divergences, and the machine profiles that produce other
machine classes on this one.

The facts a framework cannot report (which dtypes TensorFlow hands oneDNN, oneDNN's ISA) are
derived by `machine.predicted_facts` from the frameworks' own rules; so are all of them when an
old record or an evidence file is replayed. Here the rules are held against what the frameworks
themselves report, in a fresh interpreter per machine profile this machine can produce.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conformance import machine, profiles
from conformance.machine import Cpu
from tests.projects import REPO, child_environment

AVX2_ONLY = Cpu.parse("sse4_1 avx avx2 fma")
ZEN4 = Cpu.parse("avx2 fma avx512f avx512bw avx512cd avx512dq avx512vl avx512_vnni avx512_bf16; no amx")
SKYLAKE_X = Cpu.parse("sse4_1 avx avx2 fma avx512f avx512bw avx512cd avx512dq avx512vl")
SAPPHIRE_RAPIDS = Cpu(
    ZEN4.flags | frozenset({"sse4_1", "avx", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16"})
)


def test_onednn_isa_is_the_cpu_s_best_level_at_most_the_cap() -> None:
    zen4 = ZEN4  # (a list of the wide flags only: AVX2 implies the levels below it)
    assert zen4.onednn_isa() == "AVX512_CORE_BF16"
    assert zen4.onednn_isa("AVX2") == "AVX2" and zen4.onednn_isa("avx512_core") == "AVX512_CORE"
    assert zen4.onednn_isa("AVX10_1_512_AMX") == "AVX512_CORE_BF16"  # a cap above the CPU changes nothing
    assert zen4.onednn_isa("NO_SUCH_ISA") == "AVX512_CORE_BF16"  # oneDNN ignores what it cannot read
    assert AVX2_ONLY.onednn_isa() == "AVX2" and SKYLAKE_X.onednn_isa() == "AVX512_CORE"
    assert SAPPHIRE_RAPIDS.onednn_isa() == "AVX512_CORE_AMX_FP16"
    assert Cpu(frozenset(), x86=False).onednn_isa() is None


def test_tensorflow_s_rules_by_cpu() -> None:
    # DefaultOneDnnPolicy: on with neural-network instructions, off on AVX2-only and plain AVX-512.
    assert [c.tensorflow_onednn_default() for c in (AVX2_ONLY, SKYLAKE_X, ZEN4, SAPPHIRE_RAPIDS)] == [
        False, False, True, True,
    ]  # fmt: skip
    # IsDataTypeSupportedByOneDNNOnThisCPU: bfloat16 with AVX512F, float16 with AVX512-FP16 or AMX-FP16.
    assert AVX2_ONLY.tensorflow_onednn_half() == {"onednn_bfloat16": False, "onednn_float16": False}
    assert SKYLAKE_X.tensorflow_onednn_half() == {"onednn_bfloat16": True, "onednn_float16": False}  # AVX512F alone
    assert ZEN4.tensorflow_onednn_half() == {"onednn_bfloat16": True, "onednn_float16": False}
    assert SAPPHIRE_RAPIDS.tensorflow_onednn_half() == {"onednn_bfloat16": True, "onednn_float16": True}


def test_a_check_s_facts_say_whether_onednn_computes_its_dtype() -> None:
    on = machine.predicted_facts("tensorflow", ZEN4, {})
    assert on["onednn_enabled"] is True
    assert machine.check_facts(on, "bfloat16")["onednn_dtype"] is True
    assert machine.check_facts(on, "float64")["onednn_dtype"] is False
    forced_off = machine.predicted_facts("tensorflow", ZEN4, {"TF_ENABLE_ONEDNN_OPTS": "false"})
    assert machine.check_facts(forced_off, "float32")["onednn_dtype"] is False
    capped = machine.predicted_facts("torch", ZEN4, {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    assert capped["cpu_capability"] == "AVX2" and capped["onednn_bfloat16"] is False
    assert machine.check_facts(capped, "bfloat16")["onednn_dtype"] is False
    # TensorFlow decides by CPUID: capped below AVX-512 it still hands oneDNN bfloat16, which cannot run it.
    tf_capped = machine.predicted_facts(
        "tensorflow", ZEN4, {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    )
    assert tf_capped["onednn_bfloat16"] is True and tf_capped["onednn_isa"] == "AVX2"
    bfloat16 = machine.check_facts(tf_capped, "bfloat16")
    assert bfloat16["onednn_dtype"] is True and bfloat16["onednn_runs_dtype"] is False
    assert machine.check_facts(tf_capped, "float32")["onednn_runs_dtype"] is True
    assert machine.check_facts({"cpu_capability": "AVX2"}, "float32") == {"cpu_capability": "AVX2"}  # nothing to say


def test_a_fact_condition_takes_one_value_or_any_of_a_list() -> None:
    assert machine.fact_matches("AVX2", ["SSE41", "AVX2"]) and not machine.fact_matches("AVX512_CORE", ["AVX2"])
    assert machine.fact_matches(False, False) and not machine.fact_matches(None, False)


# One fresh interpreter per profile: what the frameworks report there, beside what the rules predict.
PROBE = """
import json
from conformance.adapters import pytorch, tensorflow
print(json.dumps({"tensorflow": tensorflow.reported_facts(), "torch": pytorch.reported_facts()}))
"""
PRODUCIBLE = [name for name, profile in profiles.PROFILES.items() if profile.missing(machine.this_cpu()) is None]


@pytest.mark.parametrize("name", PRODUCIBLE)
def test_the_rules_predict_what_the_frameworks_report_under_each_profile(name: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    environ = {k: v for k, v in child_environment().items() if k not in machine.VARIABLES}
    profiles.apply(profiles.get(name), environ, machine.this_cpu(), loaded=())
    finished = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=environ, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    reported = json.loads(finished.stdout.strip().splitlines()[-1])
    for framework, facts in reported.items():
        predicted = machine.predicted_facts(framework, machine.this_cpu(), environ)
        assert facts, framework
        for fact, value in facts.items():
            assert predicted[fact] == value, (name, framework, fact, predicted[fact], value)


def test_a_profile_refuses_what_it_cannot_produce() -> None:
    avx2 = profiles.get("avx2")
    with pytest.raises(profiles.ProfileError, match="needs a CPU with avx2"):
        profiles.apply(avx2, {}, Cpu(frozenset({"sse4_1", "avx"})), loaded=())
    with pytest.raises(profiles.ProfileError, match="TF_ENABLE_ONEDNN_OPTS=0 but it is set to '1'"):
        profiles.apply(avx2, {"TF_ENABLE_ONEDNN_OPTS": "1"}, ZEN4, loaded=())
    with pytest.raises(profiles.ProfileError, match="unknown machine profile 'avx512'"):
        profiles.get("avx512")


def test_a_profile_adds_its_variables_and_keeps_the_user_s_other_xla_flags() -> None:
    environ = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false", "TF_ENABLE_ONEDNN_OPTS": "0"}
    changed = profiles.apply(profiles.get("avx2"), environ, ZEN4, loaded=())
    assert environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false --xla_cpu_max_isa=AVX2"
    assert changed == {k: environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "XLA_FLAGS")}
    assert profiles.label(profiles.get("avx2"), environ) == "avx2"
    # The host's defaults with a kernel-choosing variable of the user's own are not the host's column.
    assert profiles.label(profiles.get("host"), {"TF_ENABLE_ONEDNN_OPTS": "0"}) == "host (TF_ENABLE_ONEDNN_OPTS=0)"
    assert profiles.label(profiles.get("host"), {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}) == "host"


def test_a_profile_is_refused_once_a_framework_has_read_its_variables() -> None:
    with pytest.raises(profiles.ProfileError, match="torch already loaded"):
        profiles.apply(profiles.get("onednn-off"), {}, ZEN4, loaded={"torch", "numpy"})
    assert profiles.apply(profiles.get("host"), {}, ZEN4, loaded={"torch"}) == {}  # the host's defaults set nothing


def test_records_say_their_profile_only_when_it_is_not_the_host_s(monkeypatch: pytest.MonkeyPatch) -> None:
    from conformance.records import edition

    monkeypatch.setenv(profiles.LABEL_VARIABLE, "host")
    assert profiles.current() is None
    monkeypatch.setenv(profiles.LABEL_VARIABLE, "onednn-off")
    assert profiles.current() == "onednn-off"
    assert edition({"framework_version": "2.21.0", "profile": "onednn-off"}) == "2.21.0 [onednn-off]"
    assert edition({"framework_version": "2.21.0"}) == "2.21.0"
