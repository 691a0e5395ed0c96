"""The plugin's command-line options, and `Settings`: all of them read once, typed and resolved
(paths against the invocation directory, the memory limit against the worker count)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # (imported when the settings are read: the plugin loads this module in every run)
    from conformance import isolation

TIERS = ("default", "extended", "large")
SUITE_CASES = Path(__file__).resolve().parents[2] / "cases"  # in a checkout (or an editable install)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "dilated-convolution conformance")
    group.addoption(
        "--cases",
        action="append",
        default=[],
        metavar="PATH",
        help="case file or directory to run instead of the default cases/ (repeatable)",
    )
    group.addoption(
        "--conformance-json",
        default="reports/results.json",
        metavar="PATH",
        help="where to write the results JSON (default: reports/results.json; a .jsonl stream sits beside it)",
    )
    group.addoption(
        "--conformance-html",
        default="reports/index.html",
        metavar="PATH",
        help="where to write the HTML report (default: reports/index.html; 'none' to skip it)",
    )
    group.addoption(
        "--conformance-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time limit per framework call; a check past it is stopped and reported as timeout (default 300; 0: none)",
    )
    group.addoption(
        "--conformance-load-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="extra time for the first check of each target in each worker, which imports its framework (default 300)",
    )
    group.addoption(
        "--conformance-memory-limit",
        default="auto",
        metavar="SIZE",
        help="memory each worker may allocate, e.g. 4G; past it a check gets an out-of-memory error "
        "(default auto: 80%% of RAM shared among the workers, none on a machine with a GPU driver; 'none')",
    )
    group.addoption(
        "--conformance-recycle-above",
        default="1.5G",
        metavar="SIZE",
        help="memory a worker or framework child may hold between checks; past it, it releases its caches "
        "and, if still above, is replaced by a fresh process (default 1.5G; 'none')",
    )
    group.addoption(
        "--conformance-crash-limit",
        type=int,
        default=3,
        metavar="N",
        help="after N crashes or timeouts of one target, its remaining checks are skipped (default 3)",
    )
    group.addoption(
        "--conformance-repeat",
        type=int,
        default=1,
        metavar="N",
        help="call each framework N times per check; outputs that are not bitwise identical are "
        "reported as nondeterministic (default 1: no repeat)",
    )
    group.addoption(
        "--conformance-gpu-repeat",
        type=int,
        default=3,
        metavar="N",
        help="the same for GPU targets, whose libraries may pick nondeterministic algorithms per shape "
        "(default 3; the larger of this and --conformance-repeat applies)",
    )
    group.addoption(
        "--conformance-gpu",
        choices=("auto", "probe"),
        default="auto",
        help="auto: on a machine without a GPU driver, report each GPU target's checks as skipped in one "
        "item per target and case file, without loading a framework; probe: one item per check, each "
        "asking its framework for a device (default auto)",
    )
    group.addoption(
        "--conformance-tier",
        choices=TIERS,
        default="default",
        help='default: the corpus that runs in minutes; extended: also the larger grids marked tier = "extended"; '
        'large: also the 100,000-check tier (tier = "large"), which -m large selects alone',
    )
    group.addoption(
        "--conformance-target",
        action="append",
        default=[],
        metavar="GLOB",
        help="collect only targets whose id matches (repeatable), e.g. 'torch.*-cpu'; unlike -k, the others are "
        "never collected, which matters for large corpora",
    )
    group.addoption(
        "--conformance-fuzz",
        type=int,
        default=0,
        metavar="N",
        help="also explore N random configurations with Hypothesis across the CPU targets; a divergence is "
        "shrunk to a minimal case and written as a case file under fuzz/ beside the results (default 0: off)",
    )
    group.addoption(
        "--conformance-fuzz-target",
        action="append",
        default=[],
        metavar="GLOB",
        help="fuzz only targets whose id matches (repeatable), e.g. 'torch.*'",
    )
    group.addoption(
        "--conformance-fuzz-seed", type=int, default=0, metavar="SEED", help="the exploration's seed (default 0)"
    )
    group.addoption(
        "--conformance-batch",
        choices=("auto", "case", "off"),
        default="auto",
        help="case: run each case x dtype through all its targets as one item, cases that differ only in their "
        "data (a geometry's replicates) up to ten to an item (each check still has its own record, outcome, "
        "time limit and crash isolation; -m and -k select its checks as they would single items); off: one "
        "item per check; auto: case (default auto)",
    )
    group.addoption(
        "--conformance-shard",
        default=None,
        metavar="K/N",
        help="run shard K of N (1 <= K <= N): whole cases, by a stable hash of the case id, so a case lands in "
        "the same shard on every machine; `python -m conformance merge` of all N equals the unsharded run",
    )
    group.addoption(
        "--conformance-durations",
        default=None,
        metavar="RESULTS",
        help="with --conformance-shard: balance the shards by the seconds each case took in an earlier run's "
        "results (.json or .jsonl); cases it lacks are placed by hash",
    )
    group.addoption(
        "--conformance-profile",
        default="host",
        metavar="NAME",
        help="machine profile: the variables every framework process starts with, to show another class of "
        "machine on this one (host, onednn-on, onednn-off, avx2; default host: the machine as it is). "
        "Recorded in the results; merged runs show one column per profile",
    )
    group.addoption(
        "--conformance-cache",
        default=None,
        metavar="PATH|none",
        help="where compiled programs persist between runs (JAX's and XLA's caches), in a directory per framework "
        "version, flags and CPU (default: ~/.cache/dilated-conformance/compiled, or $XDG_CACHE_HOME's); "
        "'none': a cold run, whose compiled programs are shared by its workers and removed when it ends",
    )
    group.addoption(
        "--conformance-history",
        default=None,
        metavar="PATH",
        help="add this run to a history of runs (an SQLite file, `python -m conformance history`), and show in the "
        "report since when each failing check fails and in which versions it passed",
    )
    group.addoption(
        "--expectations",
        default=None,
        metavar="PATH",
        help="known divergences file (default: cases/expectations.toml under the rootdir, or the suite's own "
        "where the rootdir has no cases/; 'none' for none)",
    )
    group.addoption(
        "--contracts",
        default=None,
        metavar="PATH",
        help="accumulation contracts file (default: cases/contracts.toml under the rootdir, else the suite's own; "
        "'none' judges by the dtype's bound alone)",
    )


@dataclass(frozen=True)
class Settings:
    cases: tuple[Path, ...]  # --cases, resolved; empty: the rootdir's cases/
    json_path: Path
    html_path: Path | None
    expectations_path: Path | None  # None: no known divergences
    contracts_path: Path | None  # None: no accumulation contracts
    limits: isolation.Limits
    repeat: int
    gpu_repeat: int
    gpu_mode: str  # "auto" or "probe"
    tier: str
    target_globs: tuple[str, ...]
    mark_expression: str
    fuzz_examples: int
    fuzz_target_globs: tuple[str, ...]
    fuzz_seed: int
    workers: int  # xdist workers of this run (0: none)
    batch: str  # "case": one item per case x dtype (its checks inside); "off": one item per check
    shard: tuple[int, int] | None  # (K, N) of --conformance-shard
    durations_path: Path | None  # --conformance-durations
    profile: str  # --conformance-profile (conformance/profiles.py)
    compilation_cache: Path | None  # --conformance-cache; None: none kept beyond the run (conformance/compile_cache.py)
    history_path: Path | None = None  # --conformance-history (conformance/history.py)

    def repeat_for(self, device: str) -> int:
        """Calls per check: GPU libraries may pick nondeterministic algorithms per shape, so GPU
        targets repeat by default."""
        return max(1, max(self.repeat, self.gpu_repeat) if device == "gpu" else self.repeat)


_roots_key = pytest.StashKey[list[Path]]()


def set_corpus_roots(config: pytest.Config, requested: tuple[Path, ...]) -> None:
    """The corpus: `--cases` paths, or the rootdir's cases/. `--cases` replaces the testpaths (cases/
    in a checkout): `pytest --cases mine/` runs mine/ only. Paths named on the command line stay
    (`pytest tests --cases mine/` runs the harness's tests and mine/)."""
    default_root = Path(config.rootpath, "cases")
    config.stash[_roots_key] = list(requested) or [default_root]
    if requested:
        kept = [] if config.args_source == pytest.Config.ArgsSource.TESTPATHS else list(config.args)
        config.args[:] = kept + [str(p) for p in requested if str(p) not in kept]


def corpus_roots(config: pytest.Config) -> list[Path]:
    return config.stash[_roots_key]


def is_worker(config: pytest.Config) -> bool:
    """An xdist worker (it has workerinput); the controller and a run without xdist have none."""
    return hasattr(config, "workerinput")


_settings_key = pytest.StashKey[Settings]()


def settings(config: pytest.Config) -> Settings:
    if _settings_key not in config.stash:
        config.stash[_settings_key] = _read(config)
    return config.stash[_settings_key]


def invocation_path(config: pytest.Config, option: str) -> Path:
    path = Path(option)
    return path if path.is_absolute() else Path(config.invocation_params.dir, path)


def _optional_path(config: pytest.Config, option: str | None) -> Path | None:
    return None if option is None else invocation_path(config, option)


# Options naming a path the run writes. pytest looks for its configuration file before any plugin's
# options exist, and reads a value after a space as a test path (pytest-dev/pytest#8846): outside the
# directory pytest runs in, that path takes the place of this project's pyproject.toml (its testpaths
# among it) as soon as it exists. The run creates it, so even a first run is split: a worker started
# later, to replace one, reads another configuration and collects other tests (xdist then stops).
WRITTEN_PATH_OPTIONS = ("--conformance-json", "--conformance-html", "--conformance-cache", "--conformance-history")


def spaced_values(config: pytest.Config, option: str) -> list[str]:
    """The values given to `option` on the command line after a space (`--option VALUE`), in order."""
    args = [str(arg) for arg in config.invocation_params.args]
    return [value for given, value in itertools.pairwise(args) if given == option]


def refuse_spaced_paths_outside(config: pytest.Config) -> None:
    """A UsageError for `--option PATH` (with a space) of WRITTEN_PATH_OPTIONS where PATH lies outside
    the directory pytest runs in; `--option=PATH` is one token, which pytest leaves alone."""
    here = Path(config.invocation_params.dir).resolve()
    for option in WRITTEN_PATH_OPTIONS:
        for value in spaced_values(config, option):
            if value != "none" and not invocation_path(config, value).resolve().is_relative_to(here):
                raise pytest.UsageError(
                    f"{option} {value}: write {option}={value}. pytest reads a value after a space as a test "
                    "path while it looks for its configuration file, before this plugin's options exist "
                    "(pytest-dev/pytest#8846); outside the directory pytest runs in, that path replaces this "
                    "project's configuration once it exists, and this run creates it"
                )


def _read(config: pytest.Config) -> Settings:
    html = config.getoption("conformance_html")
    expectations_path = _data_file(config, "expectations", "expectations.toml")
    # A framework's contract holds for every corpus: a project's cases/ without one gets the suite's.
    contracts_path = _data_file(config, "contracts", "contracts.toml", suite_unless_own=True)
    # A worker's own options do not carry the resolved -n; xdist tells each worker the count.
    workers = getattr(config, "workerinput", {}).get("workercount") or getattr(config.option, "numprocesses", None)
    durations = config.getoption("conformance_durations")
    if durations is not None and config.getoption("conformance_shard") is None:
        raise pytest.UsageError("--conformance-durations balances shards: give --conformance-shard K/N with it")
    return Settings(
        cases=tuple(Path(p).expanduser().resolve() for p in config.getoption("cases")),
        json_path=invocation_path(config, config.getoption("conformance_json")),
        html_path=None if html == "none" else invocation_path(config, html),
        expectations_path=expectations_path,
        contracts_path=contracts_path,
        limits=_limits(config, int(workers or 1)),
        repeat=config.getoption("conformance_repeat"),
        gpu_repeat=config.getoption("conformance_gpu_repeat"),
        gpu_mode=config.getoption("conformance_gpu"),
        tier=config.getoption("conformance_tier"),
        target_globs=tuple(config.getoption("conformance_target")),
        mark_expression=config.getoption("markexpr") or "",
        fuzz_examples=config.getoption("conformance_fuzz"),
        fuzz_target_globs=tuple(config.getoption("conformance_fuzz_target")),
        fuzz_seed=config.getoption("conformance_fuzz_seed"),
        workers=int(workers or 0),
        batch="off" if config.getoption("conformance_batch") == "off" else "case",
        shard=_shard(config.getoption("conformance_shard")),
        durations_path=None if durations is None else invocation_path(config, durations),
        profile=_profile(config.getoption("conformance_profile")),
        compilation_cache=_compilation_cache(config, config.getoption("conformance_cache")),
        history_path=_optional_path(config, config.getoption("conformance_history")),
    )


def _compilation_cache(config: pytest.Config, option: str | None) -> Path | None:
    from conformance import compile_cache

    if option is None:
        return compile_cache.default_root()
    return None if option == "none" else invocation_path(config, option).resolve()


def _profile(name: str) -> str:
    from conformance import profiles

    try:
        return profiles.get(name).name
    except profiles.ProfileError as exc:
        raise pytest.UsageError(f"--conformance-profile: {exc}") from None


def _shard(option: str | None) -> tuple[int, int] | None:
    if option is None:
        return None
    index, _, count = option.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        shard = (0, 0)
    if not 1 <= shard[0] <= shard[1]:
        raise pytest.UsageError(f"--conformance-shard {option}: write K/N with 1 <= K <= N, e.g. 2/3")
    return shard


def _data_file(config: pytest.Config, option: str, name: str, suite_unless_own: bool = False) -> Path | None:
    """The option's path; by default the rootdir's cases/NAME, or from a project without cases/
    (`--cases` elsewhere) the suite's own: known divergences and contracts are about frameworks,
    and hold in any corpus. `suite_unless_own`: the suite's also where cases/ lacks NAME. None when
    the option says 'none'."""
    given = config.getoption(option)
    if given == "none":
        return None
    if given:
        return invocation_path(config, given)
    own = Path(config.rootpath, "cases")
    if suite_unless_own and not (own / name).exists() and (SUITE_CASES / name).exists():
        return SUITE_CASES / name
    return Path(own if own.is_dir() or not SUITE_CASES.is_dir() else SUITE_CASES, name)


def _limits(config: pytest.Config, workers: int) -> isolation.Limits:
    from conformance import isolation

    try:
        option = config.getoption("conformance_memory_limit")
        memory = isolation.default_memory_limit(workers) if option == "auto" else isolation.parse_size(option)
    except ValueError as exc:
        raise pytest.UsageError(f"--conformance-memory-limit: {exc}") from None
    try:
        recycle_above = isolation.parse_size(config.getoption("conformance_recycle_above"))
    except ValueError as exc:
        raise pytest.UsageError(f"--conformance-recycle-above: {exc}") from None
    timeout = config.getoption("conformance_timeout")
    return isolation.Limits(
        timeout_s=timeout if timeout and timeout > 0 else None,
        load_timeout_s=max(0.0, config.getoption("conformance_load_timeout")) or None,
        memory_bytes=memory,
        crash_limit=max(1, config.getoption("conformance_crash_limit")),
        recycle_above=recycle_above,
    )
