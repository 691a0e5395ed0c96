"""What a process that runs checks holds between them, bounded whatever the run's length.

Frameworks keep what they built: compiled XLA executables per shape, traced `tf.function`s, built
Keras models, ONNX Runtime sessions, oneDNN primitives, allocator pools. A run of tens of thousands
of geometries would otherwise grow each process by every geometry it has seen. So every process that
runs checks (an xdist worker, a framework's child process) measures its resident size after each
check against one budget, `--conformance-recycle-above` (1.5 GiB by default):

1. over it, the process releases every cache it can: the harness's own (`on_release` registers
   them: built framework objects, baseline outputs, prepared data, which keep at most
   `CACHE_BYTES` of arrays beyond the running case's, `BoundedEntries`), the frameworks' (JAX's compiled
   programs, TensorFlow's kernel cache, Keras' global state) and the C allocator's free pages
   (`malloc_trim`): what a finished case no longer needs, rebuilt by the next check that does;
2. still over it after that, or over it again within 100 checks of the last release (what no release
   frees is growing: a framework's own bookkeeping, the allocator's fragments), the process is
   replaced before its next check, as long-running servers recycle a worker after N requests: a
   worker retires (conformance/isolation.py), a child exits after its reply
   (conformance/adapters/child.py). A worker holds 1.1 to 1.2 GiB that no release lowers (0.86 GiB
   the four frameworks loaded, 0.25 GiB the extended tier's 157,000 collected items), so the default
   budget leaves it about 0.3 GiB of caches; a release costs the recompilation of what the next
   checks need, a replacement a process start, the imports and the collection (about 20 s).

The same holds for the data segment where the process has a limit on it (`--conformance-memory-limit`,
RLIMIT_DATA): over half of it, what an allocator reserved and no release returns would make a later
large check's allocation fail, so the process releases, and is replaced if that is not enough.

A single check may need more than the budget while it runs (the figure `conformance/cost.py`
estimates); the budget bounds what is held from one check to the next, which is what grows.
The resident size is read from /proc/self/statm through a descriptor kept open (about 1 us).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import gc
import os
import resource
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

import numpy as np

from conformance.cost import format_size

V = TypeVar("V")
P = ParamSpec("P")
R = TypeVar("R")

RECYCLE_ABOVE = 3 << 29  # 1.5 GiB: a worker holds 0.9 GiB with torch, TensorFlow, JAX and ONNX Runtime loaded
RECYCLE_VARIABLE = "CONFORMANCE_RECYCLE_ABOVE"  # how a child learns its parent's budget (bytes; 0: none)
RELEASE_AT_MOST_EVERY = 100  # checks; over the budget again sooner, the process is replaced
YOUNG_COLLECTION_EVERY = 10_000  # allocations, in a process that runs checks (`collect_young_less_often`)

_PAGE = os.sysconf("SC_PAGE_SIZE")
_statm: int | None = None
_releases: list[Callable[[], None]] = []


def _statm_pages() -> list[bytes] | None:
    """/proc/self/statm's fields (in pages: size, resident, shared, text, lib, data, dirty)."""
    global _statm
    try:
        if _statm is None:
            _statm = os.open("/proc/self/statm", os.O_RDONLY)
        return os.pread(_statm, 128, 0).split()
    except OSError:
        return None


def resident() -> int | None:
    """This process's resident size now; None where /proc has none."""
    return resident_and_data()[0]


def resident_and_data() -> tuple[int | None, int | None]:
    """`resident()`, and the data segment and stack now (what RLIMIT_DATA caps), from one read (every
    check asks for both); None where /proc has none."""
    fields = _statm_pages()
    if not fields or len(fields) <= 5:
        return None, None
    return int(fields[1]) * _PAGE, int(fields[5]) * _PAGE


def data_budget() -> int | None:
    """Half the data segment this process may have (RLIMIT_DATA, inherited by a framework child), or
    None without a limit. A process above it holds address space that no release returns: an
    allocator's reserved arenas and pools, counted by the limit though never touched, so that a
    later large check's allocation fails (TensorFlow's `Cast` then dies of a segmentation fault)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else soft // 2


def peak_resident() -> int:
    """This process's peak resident size: VmHWM, where /proc has it. (getrusage's maxrss starts a
    child at its parent's size when it was forked: the kernel carries the forked copy's high-water
    mark across exec, so a framework child started by a 3 GiB worker would report 3 GiB.)"""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # (Linux reports KiB)


def on_release(release: Callable[[], None]) -> Callable[[], None]:
    """Register a cache's release (its `clear`): called when this process is over its budget."""
    _releases.append(release)
    return release


# What the harness's caches of a case's arrays keep of other cases than the one running. A case's
# checks run back to back, so its own entries are the ones reused; counts alone let a few large cases'
# references (a document's 4 x 208 x 208 x 32 output: 44 MB in float64, twice with its |x||w| sums)
# take the process over its budget, and each release then costs the recompilation of what follows.
CACHE_BYTES = 64 << 20


def array_bytes(value: Any) -> int:
    """The bytes of the NumPy arrays a cached value holds: itself, or in its fields or tuple items."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(array_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, tuple):
        return sum(array_bytes(item) for item in value)
    return 0


class BoundedEntries(Generic[V]):
    """Entries keyed by tuples that start with (case, dtype), in the order of their last use: at most
    `maxsize` of them, and beyond those of the newest entry's case and dtype, at most `max_bytes` of
    arrays; the least recently used go first. Released with the process's other caches when it is
    over its budget."""

    def __init__(self, maxsize: int, max_bytes: int = CACHE_BYTES) -> None:
        self.maxsize, self.max_bytes = maxsize, max_bytes
        self._entries: OrderedDict[tuple[Any, ...], tuple[V, int]] = OrderedDict()
        self.held_bytes = 0
        on_release(self.clear)

    def __contains__(self, key: tuple[Any, ...]) -> bool:
        return key in self._entries

    def __getitem__(self, key: tuple[Any, ...]) -> V:
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def __setitem__(self, key: tuple[Any, ...], value: V) -> None:
        size = array_bytes(value)
        if key in self._entries:
            self.held_bytes -= self._entries.pop(key)[1]
        self._entries[key] = (value, size)
        self.held_bytes += size
        while len(self._entries) > self.maxsize:
            self._drop(next(iter(self._entries)))
        running = key[:2]
        own = sum(size for k, (_, size) in self._entries.items() if k[:2] == running)
        for other in [k for k in self._entries if k[:2] != running]:  # (the least recently used first)
            if self.held_bytes - own <= self.max_bytes:
                break
            self._drop(other)

    def _drop(self, key: tuple[Any, ...]) -> None:
        self.held_bytes -= self._entries.pop(key)[1]

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.held_bytes = 0


class BoundedCache(Generic[P, R]):
    """`functools.lru_cache(maxsize)` bounded in bytes too (`BoundedEntries`), for a function of a case,
    a dtype and further hashable positional arguments that returns the case's arrays. Exceptions are
    not kept."""

    def __init__(self, function: Callable[P, R], maxsize: int, max_bytes: int = CACHE_BYTES) -> None:
        self.function = function
        self.entries: BoundedEntries[R] = BoundedEntries(maxsize, max_bytes)
        functools.update_wrapper(self, function)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        assert not kwargs, f"{self.function.__name__} is cached by positional arguments only"
        if args not in self.entries:
            self.entries[args] = self.function(*args, **kwargs)
        return self.entries[args]

    def cache_clear(self) -> None:
        self.entries.clear()


def bounded_cache(maxsize: int, max_bytes: int = CACHE_BYTES) -> Callable[[Callable[P, R]], BoundedCache[P, R]]:
    return lambda function: BoundedCache(function, maxsize, max_bytes)


def _release_frameworks() -> None:
    """The frameworks' own caches, of those this process has imported (none is imported here)."""
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()  # compiled executables and traces, per function and shape
    if "keras" in sys.modules:  # Keras' global graph state and name counters
        clear_session = sys.modules["keras"].backend.clear_session
        try:  # (without its own full garbage collection: `release` makes one right after this)
            clear_session(free_memory=False)
        except TypeError:  # an older Keras, without the argument
            clear_session()
    if "tensorflow" in sys.modules:
        from tensorflow.python.eager import context  # (already imported: tensorflow is)

        context.context().clear_kernel_cache()  # eager kernels, one per op and attribute set


def _trim_allocator() -> None:
    """Hand the C allocator's free pages back to the system (glibc keeps them in its arenas)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim this way
        ctypes.CDLL(None).malloc_trim(0)  # (the process's own symbols: libc's among them)


def release() -> None:
    """Every cache this process can drop, then the garbage, then the allocator's free pages."""
    for release_cache in _releases:
        release_cache()
    _release_frameworks()
    frozen = gc.get_freeze_count()
    gc.unfreeze()  # (a released cache that `keep_for_good` froze is the collector's again)
    gc.collect()
    if frozen:  # (what survived the collection is live: the collector need not walk it again)
        gc.freeze()
    _trim_allocator()


def keep_for_good() -> None:
    """A framework has just loaded: what the process holds now (its modules, types, registries) lives
    until the process exits, and moves to the generation the collector never visits (`gc.freeze`): a
    full collection that the checks' allocations set off walked every object TensorFlow, JAX and
    torch had made, 0.2 s each time in a worker. What is frozen with it (a cache, a cycle that was
    garbage already) is the collector's again at the next `release`, so memory stays bounded as before."""
    gc.freeze()


def collect_young_less_often() -> None:
    """A check allocates thousands of short-lived containers (its record's dicts and lists, NumPy's and
    the frameworks' wrappers), nearly all freed by their reference counts before it ends; a collection
    of the young generation every 700 allocations (Python's default) walked many of them while they
    were still alive. Every `YOUNG_COLLECTION_EVERY` it walks fewer: a worker spent 0.9 worker-seconds
    less beyond the frameworks in a quarter of the large tier (four alternating pairs). The older
    generations keep their thresholds; cyclic garbage waits a few thousand allocations longer."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)


def pass_to_children(limit: int | None) -> None:
    """The budget of the framework children this process starts from now on (they inherit it)."""
    os.environ[RECYCLE_VARIABLE] = str(limit or 0)


def limit_from_environment() -> int | None:
    """The budget a child was started with (its parent's), or the default."""
    text = os.environ.get(RECYCLE_VARIABLE)
    if text is None:
        return RECYCLE_ABOVE
    return int(text) or None


@dataclass
class Keeper:
    """One process's budget and what it has held: measured after each check."""

    limit: int | None  # None: nothing is released or replaced
    data_limit: int | None = None  # over it, the same (see data_budget)
    carried: int | None = None  # what the last check left this process holding into the next; None: replaced
    held_most: int = 0  # the most it carried into a check (at most the budget, where there is one)
    left_most: int = 0  # the most a check left it holding, before a release or its replacement
    releases: int = 0
    checks: int = 0
    released_after: int | None = None  # the check count at the last release
    release_caches: Callable[[], None] = field(default=release, repr=False)

    def after_check(self) -> str | None:
        """Why this process must be replaced before its next check, or None: over its budget, it
        releases its caches, and is replaced if that leaves it over the budget or if it was released
        fewer than RELEASE_AT_MOST_EVERY checks ago."""
        self.checks += 1
        why = self._judge()
        if self.carried is not None:
            self.held_most = max(self.held_most, self.carried)
        return why

    def _over(self, held: int | None, data: int | None) -> tuple[int, str] | None:
        """What is over its budget (the figure, and the budget in words), or None."""
        if self.data_limit is not None and data is not None and data > self.data_limit:
            return data, f"of data segment (half its {format_size(2 * self.data_limit)} --conformance-memory-limit)"
        if self.limit is not None and held is not None and held > self.limit:
            return held, f"(--conformance-recycle-above {format_size(self.limit)})"
        return None

    def _judge(self) -> str | None:
        held, data = resident_and_data()
        self.carried = held
        if held is None:
            return None
        self.left_most = max(self.left_most, held)
        over = self._over(held, data)
        if over is None:
            return None
        self.carried = None
        figure, budget = over
        if self.released_after is not None and self.checks - self.released_after < RELEASE_AT_MOST_EVERY:
            since = self.checks - self.released_after
            return f"held {format_size(figure)} {budget} after a check, {since} check(s) after releasing its caches"
        self.release_caches()
        self.releases += 1
        self.released_after = self.checks
        after, data = resident_and_data()
        still = self._over(after, data)
        if still is None:
            self.carried = after
            return None
        return f"held {format_size(figure)} {budget} after a check, {format_size(still[0])} after releasing its caches"

    def usage(self) -> dict[str, Any]:
        """For the run's `environment.processes`: what benchmarks/ reads."""
        return {
            "held_most_bytes": self.held_most,
            "left_most_bytes": self.left_most,
            "releases": self.releases,
            "recycle_above_bytes": self.limit,
            "peak_rss_bytes": peak_resident(),
        }


_this_process: Keeper | None = None


def keeper(limit: int | None) -> Keeper:
    """This process's keeper (one per process: a worker's guard, a child's loop), made with `limit`
    and half this process's data-segment limit, if it has one."""
    global _this_process
    _this_process = Keeper(limit, data_budget())
    return _this_process


def usage() -> dict[str, Any]:
    """This process's keeper's figures (zeros where no check has run here)."""
    return (_this_process or Keeper(None)).usage()
