"""What one run shares across its processes: the state directory (fault isolation's state files,
shared framework caches), the known divergences, and the environment the workers inherit.

The controller (or the single process without xdist) makes the state directory and sets the
environment before xdist starts any worker; each worker reads the directory from its workerinput.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conformance import compile_cache, contracts, expectations, machine, profiles
from conformance.plugin.options import is_worker, settings
from conformance.plugin.selection import targets

STATE_DIR_INPUT = "conformance_state_dir"  # the workerinput keys
SINGLE_PROCESS_WORKER = "main"  # the worker id of a run without xdist (its state and journal files)
RETIRE_INPUT = "conformance_retire"  # a worker out of memory may retire: xdist's scheduler can requeue
CONTROLLER_PID_INPUT = "conformance_controller_pid"  # a worker on this host dies with its controller


@dataclass
class RunState:
    state_dir: Path
    known: expectations.LoadedExpectations
    contracts: contracts.Contracts
    thread_limits: dict[str, str] = field(default_factory=dict)  # what share_cores set


_run_key = pytest.StashKey[RunState]()


def run_state(config: pytest.Config) -> RunState:
    return config.stash[_run_key]


def start(config: pytest.Config) -> RunState:
    """Load the known divergences and the accumulation contracts; on the controller also make the
    state directory and the workers' environment (restored when the run ends: pytest may run inside
    a test)."""
    options = settings(config)
    known = expectations.LoadedExpectations([], [])
    if options.expectations_path is not None:
        known = expectations.load(options.expectations_path, _label(config, options.expectations_path))
    stated = contracts.NONE
    if options.contracts_path is not None:
        stated = contracts.load(options.contracts_path, _label(config, options.contracts_path))
    if is_worker(config):
        state = RunState(Path(config.workerinput[STATE_DIR_INPUT]), known, stated)  # type: ignore[attr-defined]
    else:
        state_dir = make_state_dir(Path(tempfile.gettempdir()))
        config.add_cleanup(lambda: shutil.rmtree(state_dir, ignore_errors=True))
        saved = dict(os.environ)

        def restore_environment() -> None:
            os.environ.clear()
            os.environ.update(saved)

        config.add_cleanup(restore_environment)
        profile = profiles.get(options.profile)
        try:  # before any worker starts (they inherit this environment), and before share_cores' XLA_FLAGS
            profiles.apply(profile, os.environ, machine.this_cpu())
        except profiles.ProfileError as exc:
            raise pytest.UsageError(f"--conformance-profile: {exc}") from None
        os.environ[profiles.LABEL_VARIABLE] = profiles.label(profile, os.environ)  # (records carry it)
        workers = settings(config).workers
        state = RunState(state_dir, known, stated, share_cores(workers))
        if workers > 1:
            for framework in {t.adapter.framework for t in targets(config)}:
                for variable, value in framework.environment_defaults:
                    os.environ.setdefault(variable, value)
        # Every process that compiles (workers, their children) keys its own directory under this root
        # (this run's option decides, not a variable inherited from a run this one runs inside).
        os.environ[compile_cache.ROOT_VARIABLE] = str(options.compilation_cache or state_dir / "compiled")
    config.stash[_run_key] = state
    return state


def kept_cases_directory() -> Path | None:
    """Where this run's processes keep the case files they loaded (conformance/cases/load_cache.py):
    beside the compiled programs, under the root the run names (`start`); None outside a run."""
    root = os.environ.get(compile_cache.ROOT_VARIABLE)
    return Path(root) / KEPT_CASES if root else None


KEPT_CASES = "loaded-cases"
STATE_PREFIX = "conformance-run-"
OWNER_FILE = "owner"  # "<host> <pid>" of the process that made the directory


def make_state_dir(root: Path) -> Path:
    """A new state directory under `root`, named for its owner; the directories of runs whose
    owner is gone go first."""
    remove_abandoned_state_dirs(root)
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX, dir=root))
    (state_dir / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}")
    return state_dir


def remove_abandoned_state_dirs(root: Path) -> list[Path]:
    """The state directories under `root` whose run ended without removing them, removed: a run killed
    outright (SIGKILL, the out-of-memory killer, a CI job's time limit) runs no cleanup, and with
    `--conformance-cache none` its directory holds that run's compiled programs. Only a directory
    whose owner was a process of this host (a container sharing /tmp has a host name of its own and
    pids of its own) that no longer exists; one without an owner file (being made, or another
    user's: mkdtemp makes it private) stays."""
    removed = []
    host = socket.gethostname()
    for directory in root.glob(f"{STATE_PREFIX}*"):
        try:
            owner_host, pid = (directory / OWNER_FILE).read_text().split()
            if owner_host != host or _alive(int(pid)):
                continue
        except (OSError, ValueError):
            continue
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # (signal 0: only asks whether the process exists)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _label(config: pytest.Config, path: Path) -> str:
    """A data file's name in messages: relative to the rootdir where it is inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(config.rootpath) if resolved.is_relative_to(config.rootpath) else path)


def share_cores(workers: int) -> dict[str, str]:
    """With W xdist workers, each framework in each worker gets cores // W threads, through the
    variables every one of them reads at import (workers and their child processes inherit this
    process's environment). W processes that each spread every convolution over all cores
    oversubscribe the machine: at -n 2 on 2 cores the frameworks' own time rose by half
    (benchmarks/run.py). Variables already set are left alone. Returns what it set."""
    if workers < 2:
        return {}
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    variables = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
    wanted = {name: str(threads) for name in (*variables, "TF_NUM_INTEROP_THREADS")}
    set_here = {name: value for name, value in wanted.items() if name not in os.environ}
    if threads == 1 and "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        set_here["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_multi_thread_eigen=false".strip()
    os.environ.update(set_here)
    return set_here
