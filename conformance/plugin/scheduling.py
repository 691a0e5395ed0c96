"""How a run's items reach its xdist workers: no worker left idle while another holds a queue.

The project's test command (`pytest -n auto tests cases`) runs two kinds of item: some thirty thousand
checks of milliseconds each, and about 1,200 other tests (the harness's own), many of which run
a whole pytest or a browser for seconds to minutes. In collection order the other tests come as
one block, and xdist hands each worker a contiguous share of the collection: one worker got every
harness test (about 950 of its seconds) while the other finished its checks and then waited, since
the default `load` scheduler never takes back what it handed out. So:

- `prefer_work_stealing`: unless the command line names a `--dist`, the run uses xdist's
  `worksteal` scheduler, which moves queued items from the tail of a busy worker's queue to an idle
  worker. It and `load` both requeue the check of a retired worker (controller.REQUEUEING_SCHEDULERS).
- `spread`: the order worksteal's first hand-out cuts into one contiguous share per worker. Each
  share starts with its part of the other tests, a module at a time (module-scoped fixtures are set
  up once), balanced by count, and is filled up with checks: every worker starts on its harness
  tests at once, and the checks, which steal well, fill in around the long ones and make the end.
- The checks are dealt to the shares costliest first, a geometry at a time, each to the share
  with the least estimated work and room left, and each share runs its costliest first. A run
  ends when its last item does: in collection order the large tier ended on its costliest
  geometries, and one worker sat idle for up to 1.9 s while the other finished an item of about a
  second, and the one queued behind it (xdist starts an item once the next is queued, so a worker
  keeps two, and worksteal takes none from a queue of two). Costliest first, the last items are the
  cheapest (a fifth of a second in the large tier). A geometry (conformance/plugin/sharding.py's
  unit) stays whole where it fits: its checks reuse the programs a framework compiled for it, held
  per process.

Neither changes what runs or any outcome: only which worker runs an item, and when.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from itertools import groupby
from typing import NamedTuple

import pytest


def spread(
    items: list[pytest.Item],
    is_check: Callable[[pytest.Item], bool],
    workers: int,
    cost: Callable[[pytest.Item], float] = lambda item: 0.0,
    unit: Callable[[pytest.Item], Hashable] = lambda item: item.nodeid,
) -> None:
    """Reorder `items` in place into `workers` shares as worksteal hands them out (each idle worker
    in turn gets what is left // the workers left): each share its other tests' modules first, then
    its checks, costliest first. `cost`: a check's estimated work; `unit`: what it shares compiled
    programs with (the checks of one unit stay together and on one share where they fit). Without
    costs the checks keep their order."""
    checks = [item for item in items if is_check(item)]
    modules = [list(tests) for _, tests in groupby((i for i in items if not is_check(i)), key=_module)]
    if workers < 2 or not checks:
        return
    sizes, left = [], len(items)
    for workers_left in range(workers, 0, -1):
        sizes.append(left // workers_left)
        left -= sizes[-1]
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for module in sorted(modules, key=len, reverse=True):  # (largest first: the counts come out even)
        min(shares, key=len).extend(module)
    # (a share whose modules exceed its size has no room; the others' room holds every check)
    room = [max(0, size - len(share)) for share, size in zip(shares, sizes, strict=True)]
    dealt = _deal_checks(checks, room, cost, unit)
    items[:] = [item for share, its_checks in zip(shares, dealt, strict=True) for item in (*share, *its_checks)]


class _Unit(NamedTuple):
    first: int  # its place in collection order, among units
    per_check: float  # estimated work per check
    checks: list[pytest.Item]


def _deal_checks(
    checks: list[pytest.Item],
    room: list[int],
    cost: Callable[[pytest.Item], float],
    unit: Callable[[pytest.Item], Hashable],
) -> list[list[pytest.Item]]:
    """Each share's checks, at most its `room` (which holds them all between the shares). Units, costliest
    per check first (ties: collection order), go to the share with the least work so far and room
    left (ties: the first such), split only where that share fills up: each share runs its units in
    the order they were dealt, costliest first. Longest processing time first, whole units where
    they fit."""
    grouped: dict[Hashable, list[pytest.Item]] = {}
    for check in checks:
        grouped.setdefault(unit(check), []).append(check)
    units = sorted(
        (
            _Unit(first, sum(cost(check) for check in members) / len(members), members)
            for first, members in enumerate(grouped.values())
        ),
        key=lambda u: (-u.per_check, u.first),
    )
    work = [0.0] * len(room)
    taken: list[list[pytest.Item]] = [[] for _ in room]
    for whole in units:
        rest = whole.checks
        while rest:
            share = min((s for s in range(len(room)) if room[s] > 0), key=lambda s: (work[s], s))
            part, rest = rest[: room[share]], rest[room[share] :]
            room[share] -= len(part)
            work[share] += whole.per_check * len(part)
            taken[share] += part
    return taken


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def prefer_work_stealing(config: pytest.Config) -> bool:
    """Switch xdist's default `load` to `worksteal` when the command line chose neither (before
    xdist makes its scheduler, at session start). Returns whether it switched."""
    if getattr(config.option, "dist", "no") != "load" or _names_a_scheduler(config):
        return False
    config.option.dist = "worksteal"
    return True


def _names_a_scheduler(config: pytest.Config) -> bool:
    words = [*config.invocation_params.args, *os.environ.get("PYTEST_ADDOPTS", "").split()]
    words += [str(word) for word in config.getini("addopts")]
    return any(word in ("-d", "--dist") or word.startswith("--dist=") for word in words)
