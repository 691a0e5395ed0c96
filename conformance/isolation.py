"""Fault isolation: a native crash, a hang or a runaway allocation costs only its own check.

Under pytest-xdist every worker is a process of its own. Before each framework call the worker
writes what it is about to run (the record so far) to a state file. Then:

- a crash (SIGSEGV, SIGABRT, ...) kills only that worker. `faulthandler` has written the fatal
  signal and the Python stack to the worker's log, and xdist tells the controller which item was
  running. The controller turns the state file and the log into a `crash` record and starts a
  new worker.
- the time limit is an interval timer (`setitimer`, SIGALRM) whose signal `faulthandler` handles
  in C: it needs no GIL, so it also fires in a native loop that holds the GIL. It writes every
  thread's stack, then re-raises the signal at its default action, which ends the worker; the
  controller reports a stack with no fatal error as `timeout`. (faulthandler's own
  `dump_traceback_later` starts and joins a watchdog thread each time it is armed: about 0.5 ms
  per check, a tenth of the harness's per-check cost.)
- memory is capped per worker with RLIMIT_DATA, so an allocation beyond it fails inside the item
  (MemoryError, or the framework's own out-of-memory error: outcome `error`) instead of inviting
  the kernel's OOM killer to pick a process.
- a worker whose check ran out of memory, or which holds more than its budget between checks even
  after releasing its caches (conformance/held_memory.py), retires before its next check: what a
  large or failed allocation leaves behind (an allocator's cache, a framework's half-built state),
  or what a long run's geometries built up, would otherwise fail the checks after it. It writes why
  to a retirement file and exits; the controller puts the check it would have run next back in
  the queue (no record, no crash) and xdist starts a fresh worker. Only under the schedulers
  that can requeue a check (load, worksteal); without xdist there is no other process, and the
  run goes on in this one.

A target that has crashed or timed out `crash_limit` times is not called again in that run: a
build that segfaults on every convolution would otherwise cost a worker restart per item. One
that dies while its framework loads is stopped at once, since no case would load it differently.
Without xdist there is no second process, so a crash or a hang ends the whole run (the streamed
results up to then are still on disk).

A batch (one item that runs several checks, `--conformance-batch`) keeps a journal beside the
state file: the checks it will run, then each record as it is finished. When its worker dies, the
controller reports the check that was running as above and the finished ones from the journal
(`batch_remainder`). The checks the batch never reached run on another worker: the controller notes
which of the batch's checks are reported (`note_reported`) and puts the batch back in the queue,
and the batch, started again, runs only the others (`reported_before`); the controller reports
them as not run if the run ends before the batch reports again. Each death reports at least the
check that caused it, so a batch is queued again at most once per check. Under a scheduler that
cannot requeue, the checks not reached are reported as not run: none is lost. A batch judges each
target's answers together once the last has come back (plugin/items.py): a check is in the journal
once judged, so a death among a target's calls leaves the answers before it to run again with the
checks not reached. A death between two checks (the check the state file names is in the journal,
finished, or the batch had ended) or while a target's answers are judged (`ANSWERED`) charges no
check: the finished ones are reported as they finished. When a stop kills
the workers, the checks their batches had finished are reported from the journals
(`finished_in_flight`), as a stopped run reports every check that finished before the stop.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import math
import mmap
import os
import re
import resource
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, NamedTuple, NoReturn

from conformance import held_memory
from conformance.adapters.modes import gpu_driver_present
from conformance.compare import Outcome
from conformance.cost import format_size
from conformance.record_files import scratch_json
from conformance.records import Record

BROKEN_TARGETS_FILE = "broken-targets.json"
# A target stopped by another worker's crashes is noticed within this: a batch asks before each check.
BROKEN_LOOK_EVERY_S = 0.25
RETIRED_SUFFIX = ".retired.json"
# A worker's data segment with torch, TensorFlow, JAX and ONNX Runtime loaded and run once: 0.58 GiB
# measured (VmData; 0.89 GiB resident), rounded up.
FRAMEWORKS_RESIDENT = 1 << 30
BATCH_JOURNAL_SUFFIX = ".batch.jsonl"
BATCH_ENDED_LINE = '{"ended": true}'
BATCHES_REPORTED_DIR = "batches-reported"  # per batch queued again: its checks already reported
LOG_EXCERPT_LINES = 24
# A mapped file's smallest size; it doubles to fit (a state is a few KiB, a batch's journal up to a few MiB).
MAPPED_FILE_LEAST = 1 << 16
LOADING = "loading the framework"
PREPARING = "preparing the data and the reference"
# A batch's target has answered every check it was given, and the answers are being judged together
# (plugin/items.py): a death now is the harness's, between checks; those not yet in the journal run again.
ANSWERED = "judging its answers (the framework calls had returned)"


@dataclass(frozen=True)
class Limits:
    timeout_s: float | None  # per framework call; None: no limit
    load_timeout_s: float | None  # added for the first check of each target in a process (it imports the framework)
    memory_bytes: int | None  # per worker; None: no limit
    crash_limit: int  # crashes + timeouts of one target before it is not called again
    recycle_above: int | None = held_memory.RECYCLE_ABOVE  # held between checks, per process; None: no bound

    def check_budget(self) -> tuple[int, str] | None:
        """What one check may allocate (conformance/cost.py), and where the figure comes from: the
        worker's limit less what the loaded frameworks hold, at least half of it. None without a limit."""
        return None if self.memory_bytes is None else _check_budget(self.memory_bytes)


@lru_cache(maxsize=8)  # (asked twice per check; its text is a third of an unsupported check's cost)
def _check_budget(memory_bytes: int) -> tuple[int, str]:
    budget = max(memory_bytes // 2, memory_bytes - FRAMEWORKS_RESIDENT)
    source = (
        f"the worker's {format_size(memory_bytes)} (--conformance-memory-limit) less "
        f"{format_size(memory_bytes - budget)} for the frameworks it holds"
    )
    return budget, source


def parse_size(text: str) -> int | None:
    """'4G', '512M', '1.5GiB', '2000000000' -> bytes; 'none' or '0' -> None."""
    cleaned = text.strip().lower().removesuffix("ib").removesuffix("b")
    if cleaned in ("none", "0", ""):
        return None
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)", cleaned)
    if not found:
        raise ValueError(f"not a memory size: {text!r} (use e.g. 4G, 512M or none)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[found.group(2)]
    return int(float(found.group(1)) * scale)


def total_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_memory_limit(workers: int) -> int | None:
    """80% of physical memory shared among the workers; none on a machine with a GPU driver: GPU
    drivers (CUDA's above all) reserve large parts of the address space, and whether RLIMIT_DATA
    counts them has not been measured, so a GPU machine gets no limit unless one is asked for."""
    memory = total_memory()
    if memory is None or gpu_driver_present():
        return None
    return int(memory * 0.8) // max(1, workers)


class MappedFile:
    """A file a worker writes many times a check, through a shared mapping: a write is a copy into
    the page cache, not a system call (a `pwrite` cost 3 to 5 us in a worker between framework calls,
    three times a check). What a process wrote stays in the file when it dies, as with `write`. The
    file is longer than what it holds: spaces follow, which JSON allows after a value and a reader
    of lines skips as a line that does not parse. It is not mapped until the first write: until
    then it holds what an earlier process of the same name left in it."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._map: mmap.mmap | _WrittenThrough | None = None
        self._end = 0  # what it holds: the bytes before this

    def replace(self, data: bytes) -> None:
        """The file holds `data` alone."""
        self._fit(len(data))
        assert self._map is not None
        self._map[: len(data)] = data
        if len(data) < self._end:
            self._map[len(data) : self._end] = b" " * (self._end - len(data))
        self._end = len(data)

    def append(self, data: bytes) -> None:
        self._fit(self._end + len(data))
        assert self._map is not None
        self._map[self._end : self._end + len(data)] = data
        self._end += len(data)

    def _fit(self, size: int) -> None:
        if self._map is not None and size <= len(self._map):
            return
        if self._map is None:  # the first write: whatever an earlier process left is blanked
            held = os.fstat(self._fd).st_size
            os.pwrite(self._fd, b" " * held, 0)
            self._end = 0
        else:
            held = len(self._map)
            self._map.close()
        length = max(MAPPED_FILE_LEAST, held)
        while length < size:
            length *= 2
        if length > held:  # (grown with spaces, never with the zero bytes of ftruncate: a reader parses it at any time)
            os.pwrite(self._fd, b" " * (length - held), held)
        try:
            self._map = mmap.mmap(self._fd, length)
        except OSError:  # a file system without shared writable mappings (some network and FUSE ones)
            self._map = _WrittenThrough(self._fd, length)


class _WrittenThrough:
    """What `MappedFile` needs of a mapping, by `pwrite`, where the file cannot be mapped."""

    def __init__(self, fd: int, length: int) -> None:
        self._fd, self._length = fd, length

    def __len__(self) -> int:
        return self._length

    def __setitem__(self, where: slice, data: bytes) -> None:
        os.pwrite(self._fd, data, where.start or 0)

    def close(self) -> None:
        pass


class WorkerGuard:
    """Lives in the process that runs checks: notes each call, arms the time limit, caps memory."""

    def __init__(self, state_dir: Path, worker_id: str, limits: Limits) -> None:
        self.limits = limits
        self.state_path = state_dir / f"{worker_id}.json"
        # (a replaced worker's state stays until the first write)
        self._state_file = MappedFile(self.state_path)
        self.broken_path = state_dir / BROKEN_TARGETS_FILE
        self._broken: dict[str, Any] = {}
        self._broken_mtime: float | None = None
        self._broken_looked_at = -math.inf
        # Unbuffered and never closed while the process lives: faulthandler writes to its fd.
        self.log: IO[bytes] = (state_dir / f"{worker_id}.log").open("ab", buffering=0)
        self._faulthandler_ours = False
        self._state: dict[str, Any] = {}
        self._journal_file = MappedFile(state_dir / f"{worker_id}{BATCH_JOURNAL_SUFFIX}")
        # Targets this process has already loaded. Per target, not per framework: an adapter may load
        # more than its framework (a device context, a child process), and a target that hangs while
        # loading must be told from one that hangs later, whatever ran before it in this worker.
        self._loaded: set[str] = set()
        self._pid = os.getpid()  # (asked once: a system call costs microseconds between framework calls)
        self.exhausted_by: str | None = None  # the check that ran out of memory in this process
        if limits.memory_bytes is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_DATA)
            cap = limits.memory_bytes if hard == resource.RLIM_INFINITY else min(limits.memory_bytes, hard)
            resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
        self.keeper = held_memory.keeper(limits.recycle_above)  # (after the limit: it keeps half of it too)
        held_memory.collect_young_less_often()
        held_memory.pass_to_children(limits.recycle_above)

    def starting(self, nodeid: str, record: Record) -> None:
        """Called when a check starts, before the framework is even imported: what the controller
        needs if the process never returns. Arms the time limit for the whole check."""
        if not self._faulthandler_ours:
            # Here rather than at configure: pytest's own faulthandler plugin points it at stderr then.
            faulthandler.enable(self.log, all_threads=True)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # chained to below: the default action ends the process
            faulthandler.register(signal.SIGALRM, file=self.log, all_threads=True, chain=True)
            self._faulthandler_ours = True
        # Loading a target (its first check in this process imports the framework) is not the call under test:
        # it gets its own allowance, so a slow import on a loaded machine is not a timeout.
        loading = record["target"] not in self._loaded
        limit = self.limits.timeout_s
        if limit and loading and self.limits.load_timeout_s:
            limit += self.limits.load_timeout_s
        self._state = {
            "nodeid": nodeid,
            "pid": self._pid,
            "log_offset": self.log.tell(),
            "record": record,
            "phase": LOADING if loading else PREPARING,
            "limit_s": limit,
        }
        self._arm(limit)

    def progress(self, record: Record) -> None:
        """Right before the framework call: the fuller record (data hashes, reproduction), and the
        time limit restarts for the call itself."""
        rearm = self._state["limit_s"] != self.limits.timeout_s  # (the first check's includes loading)
        self._state.update(record=record, phase="in the framework call", limit_s=self.limits.timeout_s)
        if rearm:
            self._arm(self.limits.timeout_s)
        else:  # the timer armed at `starting` runs on
            self._write_state()

    def loaded(self) -> None:
        """The framework is imported; what follows is this case's own work."""
        if self._state["phase"] == LOADING:  # once per framework and process: later checks start past it
            self._state["phase"] = PREPARING
            self._loaded.add(self._state["record"]["target"])
            self._write_state()
            held_memory.keep_for_good()

    def _write_state(self) -> None:
        self._state_file.replace(scratch_json(self._state))

    def _arm(self, limit: float | None) -> None:
        self._write_state()
        signal.setitimer(signal.ITIMER_REAL, limit or 0)

    def finished(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def answered(self) -> None:
        """A batch's checks of one target have all returned, and are judged together next: no check
        is in flight (`ANSWERED`)."""
        self._state["phase"] = ANSWERED
        self._write_state()

    def ran_out_of_memory(self, check: str) -> None:
        """`check` (case, target, dtype) failed to allocate: this process retires before its next check."""
        self.exhausted_by = check

    def note_memory_held(self, check: str) -> None:
        """After `check`: a process over its budget of held memory releases its caches, and retires
        if that is not enough (conformance/held_memory.py), before the next check runs short."""
        why = self.keeper.after_check()
        if why is not None and self.exhausted_by is None:
            self.exhausted_by = f"{check} (it {why})"

    def retire(self, usage: dict[str, Any]) -> NoReturn:
        """End this worker between two checks (the one that ran out of memory has been reported): why,
        and what it used, for the controller, then an exit that runs no Python teardown, which could
        itself need the memory that is short."""
        note = {"after": self.exhausted_by, "usage": usage}
        retired = self.state_path.with_name(self.state_path.stem + RETIRED_SUFFIX)
        retired.write_text(json.dumps(note), encoding="utf-8")
        os._exit(0)

    def batch_started(self, nodeid: str, planned: list[Record]) -> None:
        """A batch item starts: its checks (as not-run records) open the journal."""
        self._journal_file.replace(scratch_json({"nodeid": nodeid, "planned": planned}) + b"\n")

    def batch_finished_check(self, record_text: str) -> None:
        """A check of the batch finished: its record, as the JSON text its report will carry."""
        self._journal_line(f'{{"record": {record_text}}}'.encode())

    def batch_ended(self) -> None:
        """Every check of the batch finished, and its report will carry them all: a stop must not
        take them from the journal a second time, nor a death before the report name a culprit."""
        self._journal_line(BATCH_ENDED_LINE.encode())

    def _journal_line(self, line: bytes) -> None:
        self._journal_file.append(line + b"\n")

    def broken(self, target: str) -> dict[str, Any] | None:
        """The crash tally of a target the controller has stopped, or None (re-read only when it changed,
        looked at no more often than every BROKEN_LOOK_EVERY_S: a batch asks before each of its checks)."""
        now = time.monotonic()
        if now - self._broken_looked_at >= BROKEN_LOOK_EVERY_S:
            self._broken_looked_at = now
            self._reread_broken()
        tally = self._broken.get(target)
        return tally if tally and tally["stopped"] else None

    def _reread_broken(self) -> None:
        """The stopped targets' file, where it changed (mid-replace: the next look reads it)."""
        try:
            mtime = self.broken_path.stat().st_mtime_ns
            if mtime != self._broken_mtime:
                self._broken = json.loads(self.broken_path.read_text(encoding="utf-8"))
                self._broken_mtime = mtime
        except (OSError, ValueError):
            pass


def memory_hint(limits: Limits) -> str:
    if limits.memory_bytes is None:
        return ""
    return f" (each worker may use {format_size(limits.memory_bytes)}: --conformance-memory-limit)"


# The runner's frame that calls the framework (a batch's checks call it through `call_check`).
_RUNNER_FRAME = re.compile(r" in (?:run|call)_check$", re.M)


def _excerpt(log: str) -> str:
    """The fatal error line and the stack of the thread that ran the check, innermost frame first,
    down to the harness's call (the pytest and xdist frames below it say nothing about the fault)."""
    blocks = re.split(r"\n(?=(?:Current thread|Thread) 0x)", log.strip())
    header = [line for line in blocks[0].splitlines() if not re.match(r"(Current thread|Thread) 0x", line)]
    stacks = [b for b in blocks if re.match(r"(Current thread|Thread) 0x", b)]
    # The checking thread is the one inside the runner's check; a fatal signal names it "Current thread".
    chosen = next((b for b in stacks if _RUNNER_FRAME.search(b)), stacks[0] if stacks else "")
    frames = []
    for line in chosen.splitlines()[1:]:
        frames.append(line)
        if _RUNNER_FRAME.search(line):
            break
    lines = [*header, *frames[:LOG_EXCERPT_LINES]]
    return "\n".join(line.rstrip() for line in lines if line.strip())


class LostCheck(NamedTuple):
    record: Record | None  # None when the state file is not about this item
    message: str
    while_loading: bool  # died before the framework call: importing it, not this case, is at fault
    answered: bool = False  # died judging a batch's answers: its framework call had returned (`ANSWERED`)


def lost_check_record(state_dir: Path, worker_id: str, nodeid: str, limits: Limits) -> LostCheck:
    """The record of a check whose worker died, from its state file and faulthandler's log."""
    try:
        state = json.loads((state_dir / f"{worker_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    log = ""
    try:
        with (state_dir / f"{worker_id}.log").open("rb") as handle:
            handle.seek(state.get("log_offset", 0) if state.get("nodeid") == nodeid else 0)
            log = handle.read().decode("utf-8", "replace")
    except OSError:
        pass
    stack_without_fatal_error = re.search(r"^(Current thread|Thread) 0x", log, re.MULTILINE) and not re.search(
        r"Fatal Python error", log
    )
    if stack_without_fatal_error or re.search(r"^Timeout \(", log, re.MULTILINE):  # (SIGALRM's dump has no header)
        outcome = Outcome.TIMEOUT
        limit = state.get("limit_s") or limits.timeout_s or 0
        phase = state.get("phase", "in the check")
        message = f"exceeded the time limit of {limit:g} s {phase} (--conformance-timeout); stack when stopped:"
    elif log.strip():
        outcome = Outcome.CRASH
        fatal = re.search(r"Fatal Python error: (.+)", log)
        message = f"the worker process crashed: {fatal.group(1) if fatal else 'see the stack'}; stack:"
    else:
        outcome = Outcome.CRASH
        message = (
            "the worker process died without reporting an error (killed from outside, e.g. by SIGKILL "
            "or the kernel's out-of-memory killer)"
        )
    if log.strip():
        message += "\n" + _excerpt(log)
    if state.get("nodeid") != nodeid:
        return LostCheck(None, message, False)
    record: Record = state["record"]  # (as the worker wrote it, from a Record)
    record["outcome"], record["message"] = outcome.value, message
    if outcome == Outcome.TIMEOUT:
        record["duration_s"] = state.get("limit_s") or limits.timeout_s
    return LostCheck(record, message, state.get("phase") == LOADING, state.get("phase") == ANSWERED)


class BatchRemainder(NamedTuple):
    finished: list[Record]  # from the journal, as the worker wrote them
    not_reached: list[Record]  # as not run, with why
    # The check the state file names had finished (the death came between two checks, or after the
    # last, before the report): it is among `finished`, and no check caused the death.
    between_checks: bool = False


def batch_remainder(
    state_dir: Path, worker_id: str, nodeid: str, lost: Record | None, answered: bool = False
) -> BatchRemainder:
    """The rest of a batch whose worker died running `lost` (None: outside any check; `answered`:
    judging its target's answers, `ANSWERED`): the records it had finished, and every check it had
    not reached, as not run (both empty for an item that was not a batch)."""
    journal = _read_journal(state_dir / f"{worker_id}{BATCH_JOURNAL_SUFFIX}")
    if journal is None or journal.nodeid != nodeid:  # (none, or an earlier batch of this worker's)
        return BatchRemainder([], [])
    if lost is None:
        reason = "not run: its batch's worker died outside any check (see the batch's crash) before reaching it"
        return BatchRemainder(journal.finished, journal.unfinished([], reason))
    if answered:  # (the answers not in the journal yet are asked again)
        reason = (
            f"not run: its batch's worker died judging {lost['target']} {lost['dtype']}'s answers, before reporting it"
        )
        return BatchRemainder(journal.finished, journal.unfinished([], reason), between_checks=True)
    if journal.ended or _check_key(lost) in {_check_key(r) for r in journal.finished}:
        reason = f"not run: its batch's worker died after {lost['target']} {lost['dtype']} finished, before reaching it"
        return BatchRemainder(journal.finished, journal.unfinished([], reason), between_checks=True)
    reason = (
        f"not run: its batch's worker died running {lost['target']} {lost['dtype']} ({lost['outcome']}) before "
        "reaching it; --conformance-batch off runs each check as an item of its own"
    )
    return BatchRemainder(journal.finished, journal.unfinished([lost], reason))


def finished_in_flight(state_dir: Path) -> Iterator[tuple[str, list[Record]]]:
    """When a stop has killed the workers: each batch that was running and the checks it had
    finished. A journal is a batch's from its start until its last check ended
    (`WorkerGuard.batch_ended`), or until the controller took it after its worker died
    (`forget_journal`)."""
    for path in sorted(state_dir.glob(f"*{BATCH_JOURNAL_SUFFIX}")):
        journal = _read_journal(path)
        if journal is not None and not journal.ended:
            yield journal.nodeid, journal.finished


def forget_journal(state_dir: Path, worker_id: str) -> None:
    """A dead worker's journal, once the controller has reported what it held."""
    (state_dir / f"{worker_id}{BATCH_JOURNAL_SUFFIX}").unlink(missing_ok=True)


@dataclass(frozen=True)
class _Journal:
    nodeid: str
    planned: list[Record]
    finished: list[Record]
    ended: bool  # every check finished (its report carries them)

    def unfinished(self, lost: list[Record], reason: str) -> list[Record]:
        """The planned checks neither finished nor `lost`, as not run for `reason`."""
        done = {_check_key(r) for r in [*self.finished, *lost]}
        return [
            {**r, "outcome": Outcome.SKIP.value, "message": reason} for r in self.planned if _check_key(r) not in done
        ]


def _read_journal(path: Path) -> _Journal | None:
    """A batch journal (`WorkerGuard.batch_started`): None when there is none or it is empty."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue  # (a line torn by the death itself)
    if not entries or "nodeid" not in entries[0]:
        return None
    finished = [entry["record"] for entry in entries[1:] if "record" in entry]
    return _Journal(entries[0]["nodeid"], entries[0]["planned"], finished, any("ended" in e for e in entries[1:]))


def _reported_path(state_dir: Path, nodeid: str) -> Path:
    return state_dir / BATCHES_REPORTED_DIR / (hashlib.sha256(nodeid.encode()).hexdigest()[:32] + ".json")


def reported_before(state_dir: Path, nodeid: str) -> set[tuple[str, str, str]]:
    """The checks (case, target, dtype) of batch `nodeid` that were reported before it was queued
    again after its worker died: empty for a batch that runs for the first time."""
    try:
        keys = json.loads(_reported_path(state_dir, nodeid).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {(case, target, dtype) for case, target, dtype in keys}


def note_reported(state_dir: Path, nodeid: str, records: list[Record]) -> None:
    """Before batch `nodeid` is queued again: these of its checks are reported (with those of its
    earlier runs), so that it runs only the others. Written whole before the batch can start again."""
    keys = reported_before(state_dir, nodeid) | {_check_key(r) for r in records}
    path = _reported_path(state_dir, nodeid)
    path.parent.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(sorted(keys)), encoding="utf-8")
    partial.replace(path)


def retirement(state_dir: Path, worker_id: str) -> dict[str, Any] | None:
    """Why `worker_id` retired (`WorkerGuard.retire`), taken once: None when it did not."""
    path = state_dir / f"{worker_id}{RETIRED_SUFFIX}"
    try:
        note: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    path.unlink(missing_ok=True)
    return note


def _check_key(record: Record) -> tuple[str, str, str]:
    return (record["case"], record["target"], record["dtype"])
