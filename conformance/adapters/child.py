"""One mechanism for "this target runs in a process of its own": a framework setting that is read
once, at import (TensorFlow's `TF_ENABLE_ONEDNN_OPTS`, Keras' `KERAS_BACKEND`), needs a process
started with it.

`InChildProcess(inner, variant, environment)` is a target that runs the adapter `inner` in a child
started with `environment` set. The parent never imports the framework: availability, every call (a
check's, or a whole composite model's) and the environment block are asked of the child. Messages
are typed dataclasses, pickled and framed by their length (8 bytes, little-endian) over the child's
stdin and stdout; the adapter itself travels in the request (its class by reference, so the child
imports the same module; each distinct adapter is unpickled once, and later requests share it). A
child ends when its parent closes the pipe or dies (conformance/lifetime.py), so no framework
process outlives a killed run.

Each distinct (framework, environment) gets one child per process, started on first use. A child
that dies is reported on the check that was running in it and forgotten alone: the next check
starts a new one, and its siblings live on. A child that holds more than its budget between two
checks, even after releasing its caches (conformance/held_memory.py), says so in its reply and
exits: the next check starts a fresh one. `tallies()` counts both, per kind of child.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, Any, Literal

import numpy as np

from conformance import held_memory, lifetime
from conformance.adapters.base import Adapter, ConvCall, ProcessDied, Unavailable, Unsupported, Wrapper
from conformance.adapters.program import Program, SetEnv
from conformance.composites import Composite
from conformance.frameworks import Framework
from conformance.machine import FactValue

PARENT_VARIABLE = "CONFORMANCE_CHILD_PARENT"
_HEADER = struct.Struct("<Q")


# -- the protocol ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckAvailable:
    adapter: Adapter
    device: str


@dataclass(frozen=True)
class Run:
    adapter: Adapter
    call: ConvCall
    device: str
    precision: str


@dataclass(frozen=True)
class RunModel:
    """A composite as one model of the framework's own (`Adapter.run_model`)."""

    adapter: Adapter
    composite: Composite
    dtype: str
    device: str
    precision: str


@dataclass(frozen=True)
class Describe:
    """The adapter's environment block (or its runtime facts), read in the child."""

    adapter: Adapter
    what: Literal["environment", "runtime_facts"] = "environment"


Request = CheckAvailable | Run | RunModel | Describe


@dataclass(frozen=True)
class Answer:
    value: Any


@dataclass(frozen=True)
class Refusal:
    kind: Literal["unavailable", "unsupported", "raised"]
    exception_type: str
    message: str


Reply = Answer | Refusal


@dataclass(frozen=True)
class Replied:
    """A reply, and what the child holds after it (conformance/held_memory.py): a child over its
    budget even after releasing its caches says why and exits once the reply is sent."""

    reply: Reply
    carried: int | None  # what the child holds into its next request (None: it is being replaced)
    left: int | None  # what this request left it holding, before any release
    peak: int
    retiring: str | None = None


def write_message(stream: IO[bytes], message: Request | Replied) -> None:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    payload = buffer.getvalue()
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


class _Pickler(pickle.Pickler):
    """Sends an adapter as its own pickle, made once per adapter: the child unpickles each distinct
    one once and then looks it up, so its requests share one adapter object, and with it the
    programs that adapter keeps per call signature (`FrameworkCall.program`)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, Adapter):
            return (_received_adapter, (_pickled_adapter(obj),))
        return NotImplemented


_pickled: dict[Adapter, bytes] = {}  # the parent's: adapters live as long as the process
_unpickled: dict[bytes, Adapter] = {}  # the child's: equal pickles are one adapter


def _pickled_adapter(adapter: Adapter) -> bytes:
    if adapter not in _pickled:
        _pickled[adapter] = pickle.dumps(adapter, protocol=pickle.HIGHEST_PROTOCOL)
    return _pickled[adapter]


def _received_adapter(pickled: bytes) -> Adapter:
    if pickled not in _unpickled:
        _unpickled[pickled] = pickle.loads(pickled)
    return _unpickled[pickled]


def read_message(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream (the other side is gone)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    return pickle.loads(payload) if len(payload) == size else None


# -- the parent's side ----------------------------------------------------------------------------


class Child:
    """A child process answering one request at a time."""

    def __init__(self, framework: Framework, environment: dict[str, str]) -> None:
        self.description = ", ".join(f"{name}={value}" for name, value in environment.items()) or framework.name
        # The child resolves pickled adapters by module: it gets this process's import path.
        env = {
            **dict(framework.environment_defaults),
            **os.environ,
            **environment,
            PARENT_VARIABLE: str(os.getpid()),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        # (Not `-m`: the module would run as __main__, and its message classes would pickle under that name.)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from conformance.adapters.child import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.retired = False
        # (adapter, device) pairs this process has said it can run: its framework is loaded, and a
        # `Run` checks again in the child anyway, so a later check spares the round trip.
        self.available: set[tuple[Adapter, str]] = set()
        self.tally = _tallies.setdefault(self.description, ChildTally())
        self.tally.started += 1

    def request(self, message: Request) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            write_message(self.process.stdin, message)
            replied = read_message(self.process.stdout)
        except (BrokenPipeError, OSError):
            replied = None
        if replied is None:
            code = self.process.wait()
            raise ProcessDied(f"the {self.description} process died (exit {_exit_text(code)})")
        self.tally.note(replied)
        if replied.retiring is not None:  # it exits once the reply is sent: the next request starts a fresh one
            self.retired = True
            self.process.stdin.close()
        reply = replied.reply
        if isinstance(reply, Answer):
            return reply.value
        if reply.kind == "unavailable":
            raise Unavailable(reply.message)
        if reply.kind == "unsupported":
            raise Unsupported(reply.message)
        raise type(reply.exception_type, (Exception,), {})(reply.message)  # the framework's own exception name

    def alive(self) -> bool:
        return not self.retired and self.process.poll() is None


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return str(code)


@dataclass
class ChildTally:
    """What the children of one kind (framework and environment) of this process held, and how often
    one was replaced for holding too much: for the run's `environment.processes`."""

    started: int = 0
    recycled: int = 0
    held_most_bytes: int = 0  # the most one carried into a request
    left_most_bytes: int = 0  # the most a request left one holding, before a release or its replacement
    peak_rss_bytes: int = 0
    first_recycled: str | None = None

    def note(self, replied: Replied) -> None:
        self.held_most_bytes = max(self.held_most_bytes, replied.carried or 0)
        self.left_most_bytes = max(self.left_most_bytes, replied.left or 0)
        self.peak_rss_bytes = max(self.peak_rss_bytes, replied.peak)
        if replied.retiring is not None:
            self.recycled += 1
            self.first_recycled = self.first_recycled or replied.retiring


_tallies: dict[str, ChildTally] = {}


def tallies() -> dict[str, dict[str, Any]]:
    return {description: asdict(tally) for description, tally in _tallies.items()}


ChildKey = tuple[str, tuple[tuple[str, str], ...]]
# This process's children. None is ever closed by hand: when this process ends, its end of the pipe
# closes and each child's loop ends with it (or the kernel's parent-death signal ends the child).
_children: dict[ChildKey, Child] = {}


def _key(framework: Framework, environment: dict[str, str]) -> ChildKey:
    return (framework.name, tuple(sorted(environment.items())))


def child(framework: Framework, environment: dict[str, str]) -> Child:
    """This process's child for the framework with this environment, started if there is none."""
    key = _key(framework, environment)
    found = _children.get(key)
    if found is None or not found.alive():  # (never started, died between checks, or retired)
        found = _children[key] = Child(framework, environment)
    return found


def ask(framework: Framework, environment: dict[str, str], message: Request) -> Any:
    """Send one request; a child that died answering it is forgotten (only that one)."""
    key = _key(framework, environment)
    try:
        return child(framework, environment).request(message)
    except ProcessDied:
        _children.pop(key, None)
        raise


def children() -> dict[ChildKey, Child]:
    return dict(_children)


class InChildProcess(Wrapper):
    """`inner` run in a child process started with `environment` (variables read once, at import).

    `already_here`, where given, is asked once per process: whether this process already runs
    `inner` as `environment` asks (the setting the variables choose is the one this process's
    framework has), loading the framework here only to confirm a yes. Then `inner` runs here: a
    second process would load the same framework to compute the same thing. The reproduction still
    sets the variables."""

    own_environment = True

    def __init__(
        self,
        inner: Adapter,
        variant: str,
        environment: dict[str, str],
        devices: tuple[str, ...],
        already_here: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(inner, variant)
        self.devices, self.runs_models = devices, inner.runs_models
        self.child_environment = dict(environment)
        self.already_here = already_here
        self._here: bool | None = None if already_here is not None else False

    def _ask(self, message: Request) -> Any:
        return ask(self.framework, self.child_environment, message)

    def runs_here(self) -> bool:
        """Whether this process computes `inner` itself (`already_here`, asked once)."""
        if self._here is None:
            assert self.already_here is not None
            self._here = self.already_here()
        return self._here

    def check_available(self, device: str) -> None:
        missing = self.framework.missing()
        if missing:  # known from package metadata: no process is started to learn it
            raise Unavailable(missing)
        if self.runs_here():
            self.inner.check_available(device)
            return
        try:
            self._confirm_available(device)
        except ProcessDied:  # it died between checks (no check of this one's doing): once more, in a new one
            self._confirm_available(device)

    def _confirm_available(self, device: str) -> None:
        """Ask the child once per process it runs in: a new child (a replacement) loads the framework
        again, and that load is timed as loading, not as the call."""
        running = child(self.framework, self.child_environment)
        if (self.inner, device) not in running.available:
            self._ask(CheckAvailable(self.inner, device))
            running.available.add((self.inner, device))

    def run(self, call: ConvCall, device: str, precision: str) -> np.ndarray:
        if self.runs_here():
            return self.inner.run(call, device, precision)
        result: np.ndarray = self._ask(Run(self.inner, call, device, precision))
        return result

    def run_model(self, composite: Composite, dtype: str, device: str, precision: str) -> np.ndarray:
        if self.runs_here():
            return self.inner.run_model(composite, dtype, device, precision)
        result: np.ndarray = self._ask(RunModel(self.inner, composite, dtype, device, precision))
        return result

    def _after_settings(self, source: str) -> str:
        """`source` after the variables this process was started with (they must come before the import)."""
        return "\n".join(part for part in (self._settings_source, source) if part)

    @functools.cached_property
    def _settings_source(self) -> str:  # (every check's reproduction starts with it)
        return Program(tuple(SetEnv(name, value) for name, value in self.child_environment.items())).source()

    def reproduction(self, call: ConvCall, device: str, precision: str) -> str:
        return self._after_settings(self.inner.reproduction(call, device, precision))

    def model_reproduction(self, composite: Composite, dtype: str, device: str, precision: str) -> str:
        return self._after_settings(self.inner.model_reproduction(composite, dtype, device, precision))

    def environment(self) -> dict[str, Any]:
        if self.runs_here():
            return self.inner.environment()
        info: dict[str, Any] = self._ask(Describe(self.inner))
        return info

    def runtime_facts(self) -> dict[str, FactValue]:
        if self.runs_here():
            return self.inner.runtime_facts()
        facts: dict[str, FactValue] = self._ask(Describe(self.inner, "runtime_facts"))
        return facts


# -- the child's side -----------------------------------------------------------------------------


def _answer(message: Request) -> Reply:
    try:
        if isinstance(message, CheckAvailable):
            message.adapter.check_available(message.device)
            return Answer(None)
        if isinstance(message, Run):
            message.adapter.check_available(message.device)
            return Answer(message.adapter.run(message.call, message.device, message.precision))
        if isinstance(message, RunModel):
            message.adapter.check_available(message.device)
            model = (message.composite, message.dtype, message.device, message.precision)
            return Answer(message.adapter.run_model(*model))
        return Answer(getattr(message.adapter, message.what)())
    except Unavailable as exc:
        return Refusal("unavailable", type(exc).__name__, str(exc))
    except Unsupported as exc:
        return Refusal("unsupported", type(exc).__name__, str(exc))
    except Exception as exc:
        return Refusal("raised", type(exc).__name__, str(exc))


def serve() -> None:
    """The child's loop. Its stdout carries only replies: anything else printed goes to stderr."""
    lifetime.die_with_parent(int(os.environ.get(PARENT_VARIABLE, "0") or 0))
    lifetime.end_without_collecting()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    keeper = held_memory.keeper(held_memory.limit_from_environment())
    while (message := read_message(requests)) is not None:
        reply = _answer(message)
        if isinstance(message, CheckAvailable):  # (the framework is loaded: `Run` follows)
            held_memory.keep_for_good()
        ran = isinstance(message, Run | RunModel)
        retiring = keeper.after_check() if ran else None
        carried = keeper.carried if ran else held_memory.resident()  # (the keeper has just read it)
        write_message(replies, Replied(reply, carried, keeper.left_most, held_memory.peak_resident(), retiring))
        if retiring is not None:
            replies.flush()
            os._exit(0)  # (no interpreter teardown: the frameworks' own can take seconds)
