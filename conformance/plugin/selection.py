"""Which targets, tiers and checks a run collects, and the markers and keywords an item carries.

Targets are the built-in adapters plus those of `pytest_conformance_adapters`; their frameworks'
records (conformance/frameworks.py) give the `-m` markers. `-m` is applied while collecting, so a
check it rules out is never made: collecting 100,000 items only for pytest to deselect them costs
seconds and hundreds of MB per worker. A batch applies `-m` and `-k` to each of its checks as the
check's own item would have had them applied, so batching never changes what runs.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

import pytest

from conformance import frameworks
from conformance.adapters import ADAPTERS, QUANTITIES, Target, all_targets
from conformance.adapters.modes import no_gpu_reason
from conformance.cases import Case
from conformance.plugin.options import TIERS, settings

# Markers that are not frameworks.
PLACES = {"cpu": "targets on the CPU", "gpu": "targets on a GPU"}
KINDS = {
    "conformance": "every case x target x dtype check",
    "extended": "checks of the extended tier (--conformance-tier extended)",
    "large": "checks of the large tier: collected only when -m names it (or with --conformance-tier large)",
}

_targets_key = pytest.StashKey[list[Target]]()
_no_gpu_key = pytest.StashKey[str | None]()
_mark_expression_key = pytest.StashKey[Any]()


def targets(config: pytest.Config) -> list[Target]:
    """Built-in targets plus those of `pytest_conformance_adapters` implementations, whose
    frameworks are registered here (so version conditions, labels and markers know them)."""
    if _targets_key not in config.stash:
        extra = [adapter for group in config.hook.pytest_conformance_adapters(config=config) for adapter in group]
        for adapter in extra:
            frameworks.register(adapter.framework)
        config.stash[_targets_key] = all_targets((*ADAPTERS, *extra))
    return config.stash[_targets_key]


def register_markers(config: pytest.Config) -> None:
    names: dict[str, str] = {}
    for framework in {t.adapter.framework for t in targets(config)}:
        names[framework.name] = f"{framework.title} targets"
        for family in framework.markers:
            names.setdefault(family, f"every {family} target")
    for name, text in sorted(names.items()):
        config.addinivalue_line("markers", f"{name}: {text}")
    for name, text in {**PLACES, **KINDS}.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def every_marker(config: pytest.Config) -> list[str]:
    """What an item that concerns every check carries (a broken case file would have run on all)."""
    frameworks_markers = {marker for t in targets(config) for marker in t.adapter.framework.all_markers}
    return sorted(frameworks_markers | set(PLACES) | set(KINDS))


def collected_targets(config: pytest.Config) -> list[Target]:
    globs = settings(config).target_globs
    every = targets(config)
    return [t for t in every if any(fnmatch.fnmatchcase(t.id, g) for g in globs)] if globs else every


def collected_tiers(config: pytest.Config) -> tuple[str, ...]:
    """The option's tier and those below it; the large tier also whenever -m names it, so that
    `-m large` alone runs it (and collects nothing else: see `selected_by_markers`)."""
    tier = settings(config).tier
    tiers = TIERS[: TIERS.index(tier) + 1]
    if "large" not in tiers and re.search(r"\blarge\b", settings(config).mark_expression):
        tiers = (*tiers, "large")
    return tiers


def case_targets(config: pytest.Config, case: Case, candidates: list[Target]) -> list[Target]:
    """The targets a case runs on: those of its op and rank, derivative targets only for the order it
    opts into, and only those `-m` can select (the others are counted as deselected)."""
    # The case's op, rank, derivative order and tier alone decide it: a sweep's thousands of cases
    # share a few answers, each worked out once (every process collects the whole corpus).
    memo = config.stash.setdefault(_case_targets_key, {})
    key = (id(candidates), case.op, case.rank, case.derivatives, case.tier)
    found = memo.get(key)
    if found is None or found[0] is not candidates:  # (the list itself is kept: its id is not reused)
        applicable = [
            t
            for t in candidates
            if not t.adapter.mismatch(case.op, case.rank) and QUANTITIES.get(t.adapter.quantity, 0) <= case.derivatives
        ]
        selected = [t for t in applicable if selected_by_markers(config, item_markers(case, t))]
        found = memo[key] = (candidates, selected, len(applicable) - len(selected))
    count_deselected(config, found[2] * len(case.dtypes))
    return list(found[1])


_case_targets_key = pytest.StashKey[dict[tuple[Any, ...], tuple[list[Target], list[Target], int]]]()


_deselected_key = pytest.StashKey[list[int]]()


def count_deselected(config: pytest.Config, checks: int) -> None:
    """Checks `-m` ruled out while collecting: pytest never saw them, so it cannot count them itself."""
    config.stash.setdefault(_deselected_key, [0])[0] += checks


def deselected(config: pytest.Config) -> int:
    return config.stash.get(_deselected_key, [0])[0]


def selected_by_markers(config: pytest.Config, markers: frozenset[str]) -> bool:
    """Whether -m selects an item with these markers, as pytest's MarkMatcher decides it: a name
    with call arguments (`-m "numpy(x=1)"`) matches only a marker with them, and the markers given
    here have none. pytest's own deselection still runs afterwards."""
    compiled = _compiled(config, _mark_expression_key, settings(config).mark_expression)
    if compiled is None:
        return True
    selected = config.stash.setdefault(_marker_sets_key, {})
    if markers not in selected:  # a few distinct marker sets, each evaluated once
        selected[markers] = bool(compiled.evaluate(lambda name, **arguments: not arguments and name in markers))
    return selected[markers]


def selected_by_keywords(config: pytest.Config, names: Iterable[str]) -> bool:
    """Whether -k selects an item whose keyword names (node names, extra keywords, markers) are
    `names`, by pytest's own rule: a name in the expression matches any of them as a substring,
    ignoring case. A batch applies it to each of its checks as the check's own item would have."""
    compiled = _compiled(config, _keyword_expression_key, config.getoption("keyword") or "")
    if compiled is None:
        return True
    lowered = [name.lower() for name in names]
    # (call parameters are an error pytest reports itself: keep the item)
    return bool(compiled.evaluate(lambda sub, **arguments: bool(arguments) or any(sub.lower() in n for n in lowered)))


def _compiled(config: pytest.Config, key: pytest.StashKey[Any], expression: str) -> Any:
    """A -m or -k expression compiled once per run; None when there is none, or it is one pytest
    will refuse itself (then nothing is ruled out while collecting)."""
    if key not in config.stash:
        try:
            from _pytest.mark.expression import Expression

            config.stash[key] = Expression.compile(expression.lstrip()) if expression.strip() else None
        except Exception:
            config.stash[key] = None
    return config.stash[key]


_keyword_expression_key = pytest.StashKey[Any]()
_marker_sets_key = pytest.StashKey[dict[frozenset[str], bool]]()


def keyword_names(node: pytest.Item | pytest.Collector) -> list[str]:
    """What -k matches on a node and its parents, as pytest's KeywordMatcher.from_item collects
    it: the names in its chain (not the session's or its root directory's), their extra keywords
    and their markers."""
    chain = [
        n
        for n in node.listchain()
        if not isinstance(n, pytest.Session)
        and not (isinstance(n, pytest.Directory) and isinstance(n.parent, pytest.Session))
    ]
    return [n.name for n in chain] + list(node.listextrakeywords()) + [m.name for m in node.iter_markers()]


_item_markers: dict[tuple[str, frameworks.Framework, str], frozenset[str]] = {}


def item_markers(case: Case, target: Target) -> frozenset[str]:
    key = (case.tier, target.adapter.framework, target.device)
    if key not in _item_markers:
        tier = [case.tier] if case.tier != "default" else []
        _item_markers[key] = frozenset(["conformance", *target.adapter.framework.all_markers, target.device, *tier])
    return _item_markers[key]


# Keyed by the targets' identities; each entry keeps its targets, so that no identity is reused.
_batch_markers: dict[tuple[str, tuple[int, ...]], tuple[tuple[Target, ...], frozenset[str]]] = {}


def batch_markers(case: Case, targets: list[Target]) -> frozenset[str]:
    """The union of `targets`' checks' markers for `case` (`item_markers`): once per tier and list of
    targets, not once per case (the large tier asks 6,240 times of a few lists of 53 targets)."""
    key = (case.tier, tuple(map(id, targets)))
    found = _batch_markers.get(key)
    if found is None:
        markers = frozenset().union(*(item_markers(case, target) for target in targets))
        found = _batch_markers[key] = (tuple(targets), markers)
    return found[1]


def item_keywords(case: Case, target: Target, dtype: str) -> set[str]:
    """What -k matches beside the id: tags, dtype, op, precision mode, variant ("plain": none)."""
    return {*case.tags, dtype, target.adapter.op, target.precision, target.adapter.variant or "plain"}


def batch_keywords(case: Case, targets: list[Target], dtype: str) -> set[str]:
    """What -k matches on a batch beside its id: its checks' keywords and their targets' ids (a
    check's own id names its target), so that a batch is selected whenever its checks are."""
    return {target.id for target in targets}.union(*(item_keywords(case, t, dtype) for t in targets))


def no_device_reason(config: pytest.Config, target: Target) -> str | None:
    """Why `target` cannot run on this machine, known without loading its framework (or None)."""
    if target.device != "gpu" or settings(config).gpu_mode == "probe":
        return None
    if _no_gpu_key not in config.stash:
        config.stash[_no_gpu_key] = no_gpu_reason()
    return config.stash[_no_gpu_key]
