"""A stopped run stops: no process of a run outlives it.

- Every process a run starts (xdist's workers, the framework children of conformance/adapters/
  child.py) asks the kernel to kill it when its parent dies (`die_with_parent`), so even a
  controller killed outright (SIGKILL, the OOM killer) takes its workers, and they their children.
- The controller turns SIGTERM and SIGINT (`stop_on_signals`) into a stop: it kills its workers at
  once (its child processes; their framework children follow them), then unwinds as pytest does
  on Ctrl-C, so the results streamed so far are written, marked as interrupted, with the signal.
- A process that has loaded the frameworks ends without collecting its heap (`end_without_collecting`),
  and a worker without finalizing it (`exit_without_finalizing`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from types import FrameType

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it ends (Linux; elsewhere a no-op), and end
    now if `parent` is already gone (it died before the request took effect)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent and os.getppid() != parent:
        os._exit(0)


@cache  # (registered once per process)
def end_without_collecting() -> None:
    """At exit, after the atexit handlers registered later (which run first), move every object to
    the generation the collector never visits (`gc.freeze`): Python's finalization collects the whole
    heap once more, and with TensorFlow, JAX and torch loaded that took a worker 5 s at the end of
    every run, while xdist waited for it to exit. Exit only: nothing the harness writes waits for a
    collection, as each file is flushed as it is written and closed when done."""
    atexit.register(gc.freeze)


@cache  # (registered once per process)
def exit_without_finalizing() -> None:
    """A worker's end skips Python's finalization: once the atexit handlers registered after this one
    have run (the harness's own), its streams are flushed and it exits at once. Tearing down the
    modules of TensorFlow, JAX and torch took a worker a second at the end of every run, and xdist waits
    for its workers to exit. Nothing it wrote waits for that (every file is flushed as it is written),
    its framework children die with it (`die_with_parent`), and xdist has its reports and its
    `workerfinished` by then (a worker's exit status is not read)."""

    def exit_now() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)

    atexit.register(exit_now)


def collect_no_more() -> None:
    """A worker's checks are done: what it holds now lives until it exits. pytest's end collects the
    whole heap several times (its unraisable- and thread-exception plugins), which with the frameworks
    loaded kept a worker busy for a second while the controller wrote the results; moved to the
    generation the collector never visits (`gc.freeze`), the heap is not visited again."""
    gc.freeze()


@contextlib.contextmanager
def collecting_nothing() -> Iterator[None]:
    """The collector off for a block that makes no reference cycles: the controller's pass over a
    run's records (a dict each, freed as the next one comes) set off a full collection every few
    tens of thousands of records, half a second of the large tier's end with both workers idle."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc; none where there is no /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # /proc/PID/stat: "pid (comm) state ppid ...", and comm may hold spaces and parentheses.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # (ended meanwhile)
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class Stopped(KeyboardInterrupt):
    """The run was stopped by a signal: pytest unwinds as on Ctrl-C."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


def stop_on_signals(processes: Callable[[], Iterable[int]], stopped: Callable[[str], None]) -> Callable[[], None]:
    """In the controller's main thread: on SIGTERM or SIGINT, SIGKILL `processes()` (the workers),
    note the signal (`stopped`) and raise `Stopped`. Returns what puts the previous handlers back."""
    previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}

    def stop(number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        # While the results are written: another SIGTERM (a supervisor repeating itself) is let go; a
        # second Ctrl-C is someone in a hurry, and interrupts as Python's own handler does.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for pid in processes():
            with contextlib.suppress(OSError):  # (gone already)
                os.kill(pid, signal.SIGKILL)
        stopped(name)
        raise Stopped(name)

    for number in STOP_SIGNALS:
        signal.signal(number, stop)

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    return restore
