"""What decides a framework's behaviour on a machine besides its version: the CPU's instruction sets
as each library sees them, and the variables that change what they see.

The same build of TensorFlow or torch takes different kernels on different CPUs: TensorFlow turns
oneDNN on by default on x86 CPUs with neural-network instructions and hands it only the dtypes
that CPU supports; torch sends bfloat16 convolutions to oneDNN where oneDNN runs AVX-512, and
float16 ones where it runs AVX512-FP16; oneDNN itself is capped by `ONEDNN_MAX_CPU_ISA`. A known
divergence states which of these decides it (`runtime` in cases/expectations.toml), and every
record carries them (`runtime`).

Some facts the frameworks report themselves (TensorFlow's `IsMklEnabled`, torch's CPU capability
and oneDNN dtype checks); the others are derived here from the CPU's flags by the frameworks' own
rules, cited at each rule. `predicted_facts` derives all of them from a CPU's flags and a process's
environment, so a record written before a fact existed (or on another machine) can be judged by the
machine it ran on; tests/test_machine.py holds the derivation against what the frameworks report
under every profile this machine can produce.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# A runtime fact's value, as a framework reports it or a rule derives it.
FactValue = bool | str | None
Facts = dict[str, FactValue]

# oneDNN's x86 instruction-set levels, lowest first, each with the /proc/cpuinfo flags it adds to the
# one before (oneDNN's cpu_isa_t; the AVX2_VNNI branch, a side branch below AVX-512, counts as AVX2).
# Every CPU with AVX2 has the levels below it (and FMA): a list of only the wide flags still says AVX2.
ONEDNN_ISA_LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("SSE41", frozenset({"sse4_1"})),
    ("AVX", frozenset({"avx"})),
    ("AVX2", frozenset({"avx2"})),
    ("AVX512_CORE", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})),
    ("AVX512_CORE_VNNI", frozenset({"avx512_vnni"})),
    ("AVX512_CORE_BF16", frozenset({"avx512_bf16"})),
    ("AVX512_CORE_FP16", frozenset({"avx512_fp16"})),
    ("AVX512_CORE_AMX", frozenset({"amx_tile", "amx_int8", "amx_bf16"})),
    ("AVX512_CORE_AMX_FP16", frozenset({"amx_fp16"})),
)
_LEVEL_NAMES = tuple(name for name, _ in ONEDNN_ISA_LEVELS)
# Other spellings ONEDNN_MAX_CPU_ISA accepts (oneDNN 3 renamed the FP16 levels AVX10_1_512*).
_ISA_ALIASES = {
    "AVX2_VNNI": "AVX2",
    "AVX2_VNNI_2": "AVX2",
    "AVX10_1_512": "AVX512_CORE_FP16",
    "AVX10_1_512_AMX": "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16": "AVX512_CORE_AMX_FP16",
    "AVX10_2_512": "AVX512_CORE_AMX_FP16",
    "AVX10_2_512_AMX_2": "AVX512_CORE_AMX_FP16",
}
# ATen's kernel levels (torch.backends.cpu.get_cpu_capability()), lowest first, with their flags.
ATEN_LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("DEFAULT", frozenset()),
    ("AVX2", frozenset({"avx2"})),
    ("AVX512", frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})),
)
# The variables that change what the libraries see; read once, when each library loads.
VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "XLA_FLAGS")


@dataclass(frozen=True)
class Cpu:
    """A CPU as /proc/cpuinfo names its features."""

    flags: frozenset[str]
    x86: bool = True

    @classmethod
    def parse(cls, text: str) -> Cpu:
        """'avx2 avx512f ... avx512_bf16; no amx' (`describe`'s spelling, the evidence files') or a flags line."""
        listed, _, extra = text.partition(";")
        extra = "" if extra.strip().startswith("no ") else extra
        return cls(frozenset((listed + " " + extra).split()))

    def has(self, *flags: str) -> bool:
        return all(flag in self.flags for flag in flags)

    def onednn_isa(self, cap: str | None = None) -> str | None:
        """oneDNN's effective ISA: the highest level whose flags this CPU has, at most `cap`
        (ONEDNN_MAX_CPU_ISA; an unknown cap is ignored, as oneDNN ignores it)."""
        if not self.x86:
            return None
        best = None
        have: set[str] = set()
        for name, flags in ONEDNN_ISA_LEVELS:
            below_avx2 = _LEVEL_NAMES.index(name) < _LEVEL_NAMES.index("AVX2")
            if not (below_avx2 and "avx2" in self.flags):  # (every AVX2 CPU has the levels below it)
                have |= flags
            if not have <= self.flags:
                break
            best = name
        limit = _isa_level(cap)
        if best is not None and limit is not None and _LEVEL_NAMES.index(best) > limit:
            best = _LEVEL_NAMES[limit]
        return best

    def aten_capability(self, requested: str | None = None) -> str:
        """torch's ATen kernel level: the highest this CPU runs, lowered by ATEN_CPU_CAPABILITY
        (a request above the CPU's is ignored, as ATen ignores it)."""
        if not self.x86:
            return "DEFAULT"
        levels = [name for name, flags in ATEN_LEVELS if flags <= self.flags]
        best = levels[-1]
        wanted = (requested or "").upper()
        return wanted if wanted in levels else best

    def tensorflow_onednn_default(self) -> bool:
        """TensorFlow's default for TF_ENABLE_ONEDNN_OPTS on Linux, the suite's platform
        (tensorflow/core/util/port.cc, DefaultOneDnnPolicy): on for CPUs with neural-network instructions."""
        nn = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
        return self.x86 and any(flag in self.flags for flag in nn)

    def tensorflow_onednn_half(self) -> dict[str, bool]:
        """Whether TensorFlow hands bfloat16 and float16 to oneDNN on this CPU (float32 always,
        float64 never): tensorflow/core/util/util.cc, IsDataTypeSupportedByOneDNNOnThisCPU, by CPUID,
        so ONEDNN_MAX_CPU_ISA does not enter (a cap below AVX-512 leaves oneDNN a bfloat16 it cannot
        run). The others run on TensorFlow's own kernels even with oneDNN on."""
        return {
            "onednn_bfloat16": self.has("avx512f") or self.has("avx_ne_convert"),
            "onednn_float16": (self.has("avx512bw") and (self.has("avx512_fp16") or self.has("amx_fp16")))
            or self.has("avx_ne_convert"),
        }


def _isa_level(name: str | None) -> int | None:
    if not name:
        return None
    upper = _ISA_ALIASES.get(name.strip().upper(), name.strip().upper())
    return _LEVEL_NAMES.index(upper) if upper in _LEVEL_NAMES else None


# The lowest oneDNN level whose convolutions run each half-precision dtype (oneDNN's own rule, which
# torch reads back through ideep: has_bf16_type_support / has_fp16_type_support).
_HALF_LEVELS = {"bfloat16": "AVX512_CORE", "float16": "AVX512_CORE_FP16"}


def onednn_runs(dtype: str, isa: str | None) -> bool:
    """Whether oneDNN at `isa` computes `dtype` (float32 at any level; never float64)."""
    if dtype == "float64":
        return False
    level, needed = _isa_level(isa), _HALF_LEVELS.get(dtype)
    return needed is None or level is None or level >= _LEVEL_NAMES.index(needed)


@cache
def this_cpu() -> Cpu:
    """This machine's CPU (/proc/cpuinfo; elsewhere a CPU with no x86 flags)."""
    machine = platform.machine().lower()
    x86 = machine in ("x86_64", "amd64", "i686", "i386")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return Cpu(frozenset(line.split(":", 1)[1].split()), x86)
    except OSError:
        pass
    return Cpu(frozenset(), x86)


def _truthy(text: str | None) -> bool | None:
    """TensorFlow's ReadBoolFromEnvVar: '1'/'true' and '0'/'false' (any case); anything else: the default."""
    if text is None:
        return None
    lowered = text.strip().lower()
    return True if lowered in ("1", "true") else False if lowered in ("0", "false") else None


def predicted_facts(framework: str, cpu: Cpu, environ: Mapping[str, str]) -> Facts:
    """The runtime facts a framework's process reports on `cpu` with `environ`, derived by the
    frameworks' own rules: what a record written before a fact existed is judged by."""
    isa = cpu.onednn_isa(environ.get("ONEDNN_MAX_CPU_ISA"))
    if framework in ("tensorflow", "keras-tensorflow"):
        enabled = _truthy(environ.get("TF_ENABLE_ONEDNN_OPTS"))
        return {
            "onednn_enabled": cpu.tensorflow_onednn_default() if enabled is None else enabled,
            **cpu.tensorflow_onednn_half(),
            "onednn_isa": isa,
        }
    if framework in ("torch", "keras-torch"):
        return {
            "onednn_enabled": cpu.x86,
            # torch asks oneDNN itself (ideep), so a cap lowers what it hands over
            "onednn_bfloat16": cpu.x86 and onednn_runs("bfloat16", isa),
            "onednn_float16": cpu.x86 and onednn_runs("float16", isa),
            "onednn_isa": isa,
            "cpu_capability": cpu.aten_capability(environ.get("ATEN_CPU_CAPABILITY")),
        }
    return {}


def facts_of_this_process(framework: str, reported: Mapping[str, FactValue]) -> Facts:
    """What an adapter records: the framework's own report (where it answered), and the derived
    facts it cannot report."""
    answered = {name: value for name, value in reported.items() if value is not None}
    return {**predicted_facts(framework, this_cpu(), os.environ), **answered}


def check_facts(facts: Mapping[str, FactValue], dtype: str) -> Facts:
    """A check's facts: its process's, and two of its dtype's. `onednn_dtype`: oneDNN is on and the
    framework hands it this dtype here (float32 always, float64 never, the half types by the
    framework's rule). `onednn_runs_dtype`: oneDNN's ISA runs this dtype (bfloat16 from AVX-512).
    TensorFlow decides by CPUID, so capped below AVX-512 it hands oneDNN a bfloat16 that oneDNN
    cannot run: the first true, the second false."""
    result = dict(facts)
    if "onednn_enabled" not in facts:
        return result
    handed = {"float32": True, "float64": False}.get(dtype, facts.get(f"onednn_{dtype}"))
    isa = facts.get("onednn_isa")
    result["onednn_dtype"] = bool(facts["onednn_enabled"]) and bool(handed)
    result["onednn_runs_dtype"] = onednn_runs(dtype, isa if isinstance(isa, str) else None)
    return result


def fact_matches(value: Any, wanted: Any) -> bool:
    """A `runtime` condition: a value, or a list of values any of which will do."""
    if isinstance(wanted, list):
        return any(value == w for w in wanted)
    return bool(value == wanted)


def describe(cpu: Cpu) -> str:
    """The CPU's features that decide kernels, as the evidence files spell them."""
    shown = [
        f
        for f in ("avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16")
        if cpu.has(f)
    ]
    amx = [f for f in sorted(cpu.flags) if f.startswith("amx")]
    return " ".join(shown) + ("; " + " ".join(amx) if amx else "; no amx")


def machine_environment(environ: Mapping[str, str] | None = None, cpu: Cpu | None = None) -> dict[str, Any]:
    """The results' `cpu_features` block: the flags that decide kernels and the variables in effect."""
    environ = os.environ if environ is None else environ
    cpu = this_cpu() if cpu is None else cpu
    return {
        "flags": describe(cpu),
        "onednn_isa": cpu.onednn_isa(environ.get("ONEDNN_MAX_CPU_ISA")),
        "tensorflow_onednn_default": cpu.tensorflow_onednn_default(),
        "variables": {name: environ[name] for name in VARIABLES if name in environ},
    }
