"""The resident memory of every process of one run, sampled while it runs, by kind of process.

A run's processes are found by a tag in their environment (every process a run starts inherits
it), so orphans are found too; each is classified by its command line: the controller (pytest),
an xdist worker, or a framework child (conformance/adapters/child.py) of the kind its settings
name (`KERAS_BACKEND=jax`, `TF_ENABLE_ONEDNN_OPTS=1`). Sampling misses peaks shorter than its
interval; the processes' own peaks (getrusage) are in the run's results beside these.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAG_VARIABLE = "CONFORMANCE_BENCHMARK_RUN"
CHILD_SETTINGS = ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _kind(pid: str, environ: bytes) -> str:
    command = Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "conformance.adapters.child" in command:
        variables = dict(
            entry.decode(errors="replace").split("=", 1) for entry in environ.split(b"\0") if b"=" in entry
        )
        return "child " + " ".join(f"{name}={variables[name]}" for name in CHILD_SETTINGS if name in variables)
    return "controller" if "pytest" in command else "worker"


def _machine_used() -> int:
    fields = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return fields["MemTotal"] - fields["MemAvailable"]


@dataclass
class Sampler:
    """Samples every `interval_s` in a thread of its own, from `start()` to `stop()`."""

    tag: str
    interval_s: float = 2.0
    peak_by_kind: dict[str, int] = field(default_factory=dict)
    processes_by_kind: dict[str, set[int]] = field(default_factory=dict)
    machine_used_at_start: int = 0
    machine_used_most: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.machine_used_at_start = self.machine_used_most = _machine_used()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        marker = f"{TAG_VARIABLE}={self.tag}".encode()
        while not self._stop.wait(self.interval_s):
            self.samples += 1
            self.machine_used_most = max(self.machine_used_most, _machine_used())
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    environ = Path("/proc", entry, "environ").read_bytes()
                    if marker not in environ:
                        continue
                    resident = int(Path("/proc", entry, "statm").read_text().split()[1]) * _PAGE
                    kind = _kind(entry, environ)
                except (OSError, ValueError, IndexError):
                    continue  # (it ended meanwhile)
                self.peak_by_kind[kind] = max(self.peak_by_kind.get(kind, 0), resident)
                self.processes_by_kind.setdefault(kind, set()).add(int(entry))

    def figures(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval_s,
            "samples": self.samples,
            "peak_rss_gib_by_kind": {k: round(v / 2**30, 3) for k, v in sorted(self.peak_by_kind.items())},
            "processes_by_kind": {k: len(v) for k, v in sorted(self.processes_by_kind.items())},
            "machine_used_gib_most": round(self.machine_used_most / 2**30, 2),
            "machine_used_gib_at_start": round(self.machine_used_at_start / 2**30, 2),
        }
