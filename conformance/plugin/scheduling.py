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

Neither changes what runs or any outcome: only which worker runs an item, and when.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import groupby, islice

import pytest


def spread(items: list[pytest.Item], is_check: Callable[[pytest.Item], bool], workers: int) -> None:
    """Reorder `items` in place into `workers` shares as worksteal hands them out (each idle worker
    in turn gets what is left // the workers left): each share its other tests' modules first, then
    checks in their order."""
    checks = [item for item in items if is_check(item)]
    modules = [list(tests) for _, tests in groupby((i for i in items if not is_check(i)), key=_module)]
    if workers < 2 or not checks or not modules:
        return
    sizes, left = [], len(items)
    for workers_left in range(workers, 0, -1):
        sizes.append(left // workers_left)
        left -= sizes[-1]
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for module in sorted(modules, key=len, reverse=True):  # (largest first: the counts come out even)
        min(shares, key=len).extend(module)
    remaining = iter(checks)
    ordered: list[pytest.Item] = []
    for share, size in zip(shares, sizes, strict=True):
        ordered += share
        ordered += islice(remaining, max(0, size - len(share)))
    ordered += remaining
    items[:] = ordered


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
