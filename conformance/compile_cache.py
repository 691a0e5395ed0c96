"""Persistent compilation caches: a re-run of an unchanged install loads the programs its first run
compiled instead of compiling them again.

JAX (and Keras on JAX) compiles a program for every geometry, dtype and mode it runs, eager calls
included; TensorFlow's XLA does the same for `jit_compile`. Both compilers can keep what they
compiled on disk (JAX's `jax_compilation_cache_dir`; TensorFlow's
`--tf_xla_persistent_cache_directory` in `TF_XLA_FLAGS`). Inside such a directory each compiler keys
an entry by the program itself (the HLO and the compile options). What that key may not hold is
everything else that changes what a compiled program computes, so the directory one process uses is
named by all of it (`directory_name`):

- the framework's exact version and its companions' (jaxlib beside jax, the backend under Keras);
- the variables read when the framework loads that choose its kernels or its compiler's flags
  (`KEY_VARIABLES`: a machine profile's variables among them, less the cache's own flag);
- the CPU's instruction sets and architecture, for which XLA's CPU compiler generates code.

Two installs, two profiles or two machines therefore never read each other's entries; a changed
version writes a directory of its own. Each process that loads a framework computes its own name
from its own environment (a oneDNN-on child is not its worker), under the root the run names in
`ROOT_VARIABLE`: `--conformance-cache PATH`, by default `default_root()` in the user's cache
directory; with `--conformance-cache none` a directory of the run's own that is removed when it
ends (a cold run, whose workers still share what one of them compiled).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from conformance import machine
from conformance.frameworks import Framework, installed_version

ROOT_VARIABLE = "CONFORMANCE_COMPILATION_CACHE"
TF_XLA_FLAGS = "TF_XLA_FLAGS"
TF_CACHE_FLAG = "--tf_xla_persistent_cache_directory"
# What a framework reads at load time that changes its kernels or its compiler's output: the machine
# profile's variables (machine.VARIABLES, XLA_FLAGS among them), TensorFlow's XLA flags, and the
# thread counts a run sets (XLA's CPU code differs with and without its own thread pool).
KEY_VARIABLES = (
    *machine.VARIABLES,
    TF_XLA_FLAGS,
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_NUM_THREADS",
    "JAX_ENABLE_X64",
    "JAX_DEFAULT_MATMUL_PRECISION",
)


def default_root() -> Path:
    """`$XDG_CACHE_HOME/dilated-conformance/compiled`, or under ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dilated-conformance" / "compiled"


def _without_cache_flag(flags: str) -> str:
    return " ".join(word for word in flags.split() if not word.startswith(TF_CACHE_FLAG))


def directory_name(framework: Framework, environ: Mapping[str, str], cpu: machine.Cpu) -> str:
    """`jax--jax-0.10.2-jaxlib-0.10.2--<digest>`: the versions in clear (so a person sees which install a
    directory belongs to), everything else in the digest."""
    versions = [(framework.name, framework.version() or "none")]
    # (A backend's alternative distributions, tensorflow or tensorflow-cpu: the installed ones.)
    versions += [(name, found) for name in framework.companions if (found := installed_version((name,)))]
    variables = {name: environ.get(name) for name in KEY_VARIABLES}
    variables[TF_XLA_FLAGS] = _without_cache_flag(variables[TF_XLA_FLAGS] or "") or None
    facts = {
        "versions": versions,
        "variables": variables,
        "cpu": sorted(cpu.flags),
        "architecture": platform.machine(),
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    readable = "-".join(f"{name}-{version}" for name, version in versions)
    return f"{framework.name}--{readable}--{digest}"


def directory(framework: Framework, environ: Mapping[str, str] | None = None) -> Path | None:
    """Where this process keeps `framework`'s compiled programs (made if missing); None when the run
    names no root (a process outside a run: a reproduction, a test's own call) or it cannot be made."""
    environ = os.environ if environ is None else environ
    root = environ.get(ROOT_VARIABLE)
    if not root:
        return None
    path = Path(root) / directory_name(framework, environ, machine.this_cpu())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # (a read-only or full home): the run goes on cold rather than losing its checks
        return None
    return path


def point_jax(jax: Any, framework: Framework) -> Path | None:
    """Point JAX's persistent cache at this process's directory, keeping every program (the
    defaults keep only those that took a second to compile: none of a convolution's do)."""
    path = directory(framework)
    if path is not None:
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def point_tensorflow(framework: Framework, environ: MutableMapping[str, str] | None = None) -> Path | None:
    """Add the cache directory to `TF_XLA_FLAGS`, which TensorFlow reads when XLA first compiles
    (call before importing it)."""
    environ = os.environ if environ is None else environ
    path = directory(framework, environ)
    if path is not None:
        flags = _without_cache_flag(environ.get(TF_XLA_FLAGS, ""))
        environ[TF_XLA_FLAGS] = f"{flags} {TF_CACHE_FLAG}={path}".strip()
    return path
