"""Machine profiles: one machine made to look like another class of machine.

The frameworks read the variables that choose their CPU kernels once, when they load
(`machine.VARIABLES`), so a profile is a set of variables the run's processes start with. A cap
only lowers what a library uses, so a profile can show a lower machine class on a higher machine
and never the reverse: `requires` names the CPU flags a profile needs, and a machine without them
is refused with the reason. Each run records its profile (the results' environment, and each
record's `profile` unless it is the host's), so merged runs show one column per profile.

What no variable reaches: ONNX Runtime's MLAS kernels and NumPy choose by CPUID alone, and
TensorFlow decides which dtypes go to oneDNN by CPUID (`Cpu.tensorflow_onednn_half`), not by
ONEDNN_MAX_CPU_ISA.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Container, MutableMapping
from dataclasses import dataclass

from conformance.machine import VARIABLES, Cpu

HOST = "host"
# The run's profile label, set by the controller for every process of the run (workers, children).
LABEL_VARIABLE = "CONFORMANCE_PROFILE"
# Modules that read the profile's variables at import: once one is loaded, a profile is too late.
_READ_AT_IMPORT = ("tensorflow", "torch", "jax", "jaxlib", "keras")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    variables: tuple[tuple[str, str], ...] = ()  # XLA_FLAGS' value is a flag added to the variable's
    requires: frozenset[str] = frozenset()  # CPU flags (/proc/cpuinfo names) the machine must have

    def missing(self, cpu: Cpu) -> str | None:
        """Why this machine cannot produce the profile, or None."""
        lacking = sorted(self.requires - cpu.flags)
        if not cpu.x86 and self.requires:
            return f"profile {self.name!r} caps x86 instruction sets; this machine is not x86"
        if lacking:
            return f"profile {self.name!r} needs a CPU with {', '.join(lacking)}; a cap can only lower what a CPU has"
        return None


_AVX2_CAPS = (
    ("ONEDNN_MAX_CPU_ISA", "AVX2"),  # oneDNN in torch and TensorFlow
    ("ATEN_CPU_CAPABILITY", "avx2"),  # torch's own kernels (read when torch loads)
    ("XLA_FLAGS", "--xla_cpu_max_isa=AVX2"),  # JAX's compiled code
)

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(HOST, "this machine as it is: every framework's own defaults"),
        Profile(
            "onednn-on",
            "TensorFlow with oneDNN forced on (TF_ENABLE_ONEDNN_OPTS=1): its default on x86 CPUs with "
            "AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX",
            (("TF_ENABLE_ONEDNN_OPTS", "1"),),
        ),
        Profile(
            "onednn-off",
            "TensorFlow's own kernels (TF_ENABLE_ONEDNN_OPTS=0): its default on AVX2-only and older x86 CPUs",
            (("TF_ENABLE_ONEDNN_OPTS", "0"),),
        ),
        Profile(
            "avx2",
            "an AVX2-only x86 CPU: oneDNN (torch's and TensorFlow's) capped at AVX2, torch's kernels at AVX2, "
            "XLA's code at AVX2, and TensorFlow's oneDNN off, as it is by default there (ONNX Runtime and "
            "NumPy choose by CPUID: no variable caps them)",
            (("TF_ENABLE_ONEDNN_OPTS", "0"), *_AVX2_CAPS),
            frozenset({"avx2", "fma"}),
        ),
        Profile(
            "avx2-onednn-on",
            "the same AVX2 caps with TensorFlow's oneDNN forced on: what a user who caps oneDNN to reproduce an "
            "AVX2 machine's numbers gets (TensorFlow still decides by CPUID which dtypes oneDNN takes)",
            (("TF_ENABLE_ONEDNN_OPTS", "1"), *_AVX2_CAPS),
            frozenset({"avx2", "fma"}),
        ),
    )
}


class ProfileError(ValueError):
    pass


def get(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown machine profile {name!r}; one of {', '.join(PROFILES)}") from None


def apply(
    profile: Profile, environ: MutableMapping[str, str], cpu: Cpu, loaded: Container[str] | None = None
) -> dict[str, str]:
    """Set the profile's variables in `environ` (the processes a run starts inherit them); returns
    what it set. Refuses a profile this machine cannot produce, a variable the user set to another
    value, and a framework already loaded in this process (`loaded`: sys.modules), which read its
    variables then."""
    missing = profile.missing(cpu)
    if missing:
        raise ProfileError(missing)
    modules = sys.modules if loaded is None else loaded
    early = [name for name in _READ_AT_IMPORT if name in modules and profile.variables]
    if early:
        raise ProfileError(
            f"profile {profile.name!r}: {', '.join(early)} already loaded in this process, which read its "
            "variables then; run pytest without a plugin or conftest that imports it"
        )
    changed: dict[str, str] = {}
    for variable, value in profile.variables:
        current = environ.get(variable)
        if variable == "XLA_FLAGS":
            flag = value.split("=", 1)[0]
            if current is not None and flag in current and value not in current:
                raise ProfileError(f"profile {profile.name!r} sets {value} but XLA_FLAGS has {current!r}")
            if current is None or value not in current:
                changed[variable] = f"{current or ''} {value}".strip()
        elif current is not None and current != value:
            raise ProfileError(f"profile {profile.name!r} sets {variable}={value} but it is set to {current!r}")
        elif current is None:
            changed[variable] = value
    environ.update(changed)
    return changed


def label(profile: Profile, environ: MutableMapping[str, str]) -> str:
    """The profile's name, with any kernel-choosing variable set beyond it: a run with the user's own
    TF_ENABLE_ONEDNN_OPTS=0 is not the host's defaults, and must not merge into its column."""
    stated = dict(profile.variables)
    extra = []
    for variable in VARIABLES:
        value = environ.get(variable)
        if variable == "XLA_FLAGS":  # (it also carries thread settings: only the ISA cap chooses kernels)
            value = next((f for f in (value or "").split() if f.startswith("--xla_cpu_max_isa")), None)
        if value is not None and value != stated.get(variable):
            extra.append(f"{variable}={value}")
    return f"{profile.name} ({', '.join(extra)})" if extra else profile.name


def current() -> str | None:
    """This process's profile label, as its records carry it; None for the host's defaults (or a
    process outside a run, e.g. `python -m conformance reproduce`)."""
    found = os.environ.get(LABEL_VARIABLE)
    return None if not found or found == HOST else found
