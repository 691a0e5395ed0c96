"""Collecting the corpus: each case file becomes one item per case x target x dtype, or one
`BatchItem` per case x dtype (`--conformance-batch`), and one `NotRunItem` per target this machine
cannot run; `composites.toml` one item per composite x plain target x dtype, and every validation
error an item of its own that fails with it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conformance import composites
from conformance.adapters import Target
from conformance.cases import NON_CASE_FILES, Case, LoadResult, case_files, id_lines
from conformance.cases.load_cache import load_file_kept
from conformance.plugin import sharding
from conformance.plugin.items import BatchItem, CompositeItem, ConformanceItem, NotRunChecks, invalid_item
from conformance.plugin.options import corpus_roots, settings
from conformance.plugin.run_state import kept_cases_directory
from conformance.plugin.selection import (
    batch_keywords,
    batch_markers,
    collected_targets,
    collected_tiers,
    count_deselected,
    item_keywords,
    item_markers,
    keyword_names,
    selected_by_keywords,
    selected_by_markers,
)
from conformance.plugin.selection import case_targets as targets_for_case
from conformance.semantics import CONV

TIER_SWITCHES = {"extended": "--conformance-tier extended", "large": "-m large, or --conformance-tier large"}


def tiers_left_out(config: pytest.Config) -> str | None:
    """A named corpus's cases that this run's tier leaves out, and the switch that runs them: a
    porter's extended-tier file would otherwise run nothing and say nothing of why. (Only for
    `--cases`: the suite's own corpus keeps its larger tiers opt-in, as the README says.)"""
    if not settings(config).cases:
        return None
    collected = collected_tiers(config)
    left: dict[str, int] = {}
    for path, root in dict(case_files(corpus_roots(config))).items():
        if path.name != composites.FILE_NAME:
            for case in load_case_file(path, root).cases:
                if case.tier not in collected:
                    left[case.tier] = left.get(case.tier, 0) + 1
    if not left:
        return None
    named = "; ".join(f"{count} case(s) of tier {tier} ({TIER_SWITCHES[tier]})" for tier, count in sorted(left.items()))
    return f"not run, of a tier this run leaves out: {named}"


def load_case_file(path: Path, root: Path) -> LoadResult:
    """A corpus file under `root`, its cases and errors labelled by their path under the root's
    parent, and kept between runs (conformance/cases/load_cache.py): every process of a run that
    loads it (the workers' collection, the controller's corpus) reads the one entry."""
    return load_file_kept(path, root.parent, kept_cases_directory())


def case_named(config: pytest.Config, label: str, case_id: str) -> Case | None:
    """The case `case_id` of the corpus file its records label `label` (`load_case_file`), or None."""
    for path, root in case_files(list(corpus_roots(config))):
        if path.is_relative_to(root.parent) and str(path.relative_to(root.parent)) == label:
            return next((case for case in load_case_file(path, root).cases if case.qualified_id == case_id), None)
    return None


def _root_of(config: pytest.Config, path: Path) -> Path | None:
    for root in corpus_roots(config):
        if path.resolve() == root or path.resolve().is_relative_to(root):
            return root
    return None


def collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix != ".toml":
        return None
    root = _root_of(parent.config, file_path)
    if root is None:
        return None
    if file_path.name == composites.FILE_NAME:
        return CompositesFile.from_parent(parent, path=file_path)
    if file_path.name in NON_CASE_FILES:
        return None
    return CaseFile.from_parent(parent, path=file_path, root=root if root.is_dir() else root.parent)


class CaseFile(pytest.File):
    def __init__(self, *, root: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root

    def collect(self) -> Iterator[pytest.Item]:
        loaded = load_case_file(self.path, self.root)
        for error in loaded.errors:
            yield invalid_item(self, error)
        candidates = collected_targets(self.config)
        tiers = collected_tiers(self.config)
        not_run = NotRunChecks(self.config)
        # "case": every case's checks of one dtype as one item (a pytest item costs more than a small
        # case's check), the replicates of one geometry a few cases to an item; "off": one item per check.
        batched = settings(self.config).batch == "case"
        file_keywords = keyword_names(self)
        replicates = _Replicates(self)
        for case in sharding.taken(self.config, [case for case in loaded.cases if case.tier in tiers]):
            case_targets = targets_for_case(self.config, case, candidates)
            for dtype in case.dtypes:
                runnable = [target for target in case_targets if not not_run.add(case, target, dtype)]
                if batched and runnable:
                    runnable = self._selected_by_keywords(file_keywords, case, runnable, dtype)
                    name = f"{case.id}[batch-{dtype}]"
                    if runnable and self._batch_selected(file_keywords, name, case, runnable, dtype):
                        yield from replicates.add(case, runnable, dtype)
                        continue
                for target in runnable:
                    yield ConformanceItem.from_parent(
                        self, name=check_name(case, target, dtype), case=case, target=target, dtype=dtype
                    )
        yield from replicates.flush()
        yield from not_run.items(self)

    def _selected_by_keywords(
        self, file_keywords: list[str], case: Case, targets: list[Target], dtype: str
    ) -> list[Target]:
        """The targets whose check -k selects, judged as the check's own item would be (pytest's
        -k sees the batch only as a whole); the others are counted as deselected."""
        if not self.config.getoption("keyword"):
            return targets
        kept = [
            target
            for target in targets
            if selected_by_keywords(
                self.config,
                [
                    *file_keywords,
                    check_name(case, target, dtype),
                    *item_keywords(case, target, dtype),
                    *item_markers(case, target),
                ],
            )
        ]
        count_deselected(self.config, len(targets) - len(kept))
        return kept

    def _batch_selected(
        self, file_keywords: list[str], name: str, case: Case, targets: list[Target], dtype: str
    ) -> bool:
        """Whether pytest's own -m and -k keep the batch of these (each selected) checks. A batch
        carries the union of its checks' markers and keywords, which an expression with `not` can
        reject (`-m "not (torch and gpu)"` and a batch of torch-cpu and jax-gpu checks): then its
        checks are collected one item each, for pytest to judge one by one as it would have."""
        keyword = self.config.getoption("keyword")
        if not settings(self.config).mark_expression and not keyword:
            return True
        markers = batch_markers(case, targets)
        if not selected_by_markers(self.config, markers):
            return False
        # (the keywords only for -k: a large tier's batch has 53 checks, and -m alone is the common case)
        return not keyword or selected_by_keywords(
            self.config, [*file_keywords, name, *batch_keywords(case, targets, dtype), *markers]
        )


# Replicates of one geometry (a sweep's `replicates`, the large tier's 130 draws of each) through the
# same targets share an item, up to this many cases: pytest's and xdist's work per item and its report
# (about 5 ms on 2 cores) is a tenth of a large-tier case's harness work, and a batch of this many
# still leaves hundreds of items for the workers to share and steal.
REPLICATES_PER_BATCH = 10


class _Replicates:
    """Consecutive batches of one file that only their data tells apart (one geometry, tags and tier,
    the same targets, per dtype) gathered into one `BatchItem`, in collection order. With -k, every
    case stays an item of its own: -k may name a case, and a batch's checks are selected as their
    own items would be."""

    def __init__(self, parent: CaseFile) -> None:
        self.parent = parent
        self.most = 1 if parent.config.getoption("keyword") else REPLICATES_PER_BATCH
        self.geometry: tuple[Any, ...] | None = None
        self.pending: dict[str, tuple[list[Case], list[Target]]] = {}  # per dtype, in the order they came

    def add(self, case: Case, targets: list[Target], dtype: str) -> Iterator[BatchItem]:
        """`case`'s batch of `dtype`, joined to the one before it where it can; the batches that are
        complete, in their order."""
        geometry = (sharding.unit_of_case(case), case.tags, case.tier)
        if geometry != self.geometry:
            yield from self.flush()
            self.geometry = geometry
        pending = self.pending.get(dtype)
        if pending is not None and (pending[1] != targets or len(pending[0]) >= self.most):
            yield self._item(dtype, *self.pending.pop(dtype))
            pending = None
        if pending is None:
            self.pending[dtype] = ([case], targets)
        else:
            pending[0].append(case)

    def flush(self) -> Iterator[BatchItem]:
        for dtype, (cases, targets) in self.pending.items():
            yield self._item(dtype, cases, targets)
        self.pending.clear()

    def _item(self, dtype: str, cases: list[Case], targets: list[Target]) -> BatchItem:
        more = f"+{len(cases) - 1}" if len(cases) > 1 else ""
        name = f"{cases[0].id}[batch-{dtype}{more}]"
        return BatchItem.from_parent(self.parent, name=name, cases=cases, targets=targets, dtype=dtype)


def check_name(case: Case, target: Target, dtype: str) -> str:
    """A check's item name: its id within the case file."""
    return f"{case.id}[{target.id}-{dtype}]"


class CompositesFile(pytest.File):
    """The documents' multi-layer examples: each composite through every plain (non-variant) target,
    and every target that runs it as one model (Keras' eager and compiled models)."""

    def collect(self) -> Iterator[pytest.Item]:
        rootpath = self.config.rootpath
        label = str(self.path.relative_to(rootpath)) if self.path.is_relative_to(rootpath) else str(self.path)
        loaded, errors = composites.load(self.path, label)
        for error in errors:
            yield invalid_item(self, error)
        plain = [
            t
            for t in collected_targets(self.config)
            # (composites are 2-D forward convolutions)
            if not t.adapter.mismatch(CONV, 2) and (not t.adapter.variant or t.adapter.runs_models)
        ]
        lines = id_lines(self.path.read_text())
        not_run = NotRunChecks(self.config)
        cases = [dataclasses.replace(c.as_case(label), line=lines.get(c.id, 1)) for c in loaded]
        taken = {case.id for case in sharding.taken(self.config, cases)}
        for composite, case in zip(loaded, cases, strict=True):
            if case.id not in taken:
                continue
            for dtype in case.dtypes:
                for target in plain:
                    if not selected_by_markers(self.config, item_markers(case, target)):
                        count_deselected(self.config, 1)
                        continue
                    if not not_run.add(case, target, dtype):
                        yield CompositeItem.from_parent(
                            self, name=check_name(case, target, dtype), case=case, target=target, dtype=dtype,
                            composite=composite,
                        )  # fmt: skip
        yield from not_run.items(self)
