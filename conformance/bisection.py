"""Which release changed it: a binary search over a framework's released versions.

Given a package, a good release and a bad one, and a pytest selection, `bisect` lists the releases
in between from the package registry, runs the selection in one environment per release and
finds the first release whose checks differ from the good one's, in about log2(N) runs (like
`asv find`, over releases instead of commits). What "differ" means is chosen: the observed
outcomes (before known divergences relabel them, as `diff` compares), also the output bits, or
also error ratios beyond a factor.

Three rules keep the answer honest:
- A release that does not install or import is skipped and said so; the search goes on with the
  others, and the answer names the untested releases it cannot rule out.
- Flakiness is not bisected: the good and the bad release each run more than once, and a check
  whose outcome or bits differ between runs of one release (or that a history of runs calls
  flaky) is set aside and reported with its runs. If nothing else differs, there is nothing to
  bisect and the search refuses.
- The release under test is forced (an override), its companions that must move with it follow
  it (jaxlib with jax), and everything else stays at the checkout's `constraints.txt`: one
  variable moves.

The search (`search`) takes its registry and runner as parameters, so it is tested with fakes;
`PipRegistry` and `ReleaseEnvironments` are the real ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from conformance import diff as diffing
from conformance.records import observed, output_identity
from conformance.results import ResultsFileError, read_results, result_key

Key = tuple[str, str, str]  # (case, target, dtype)
Compare = Literal["outcome", "bits", "ratio"]
COMPARE_MODES: tuple[Compare, ...] = ("outcome", "bits", "ratio")


class BisectError(Exception):
    """A bisection that cannot start or cannot decide, with the reason in words."""


# --- what one run of the selection says about each check ---


@dataclass(frozen=True)
class Observed:
    outcome: str  # observed, before known divergences relabel it
    output: str | None  # the output bits (None where not comparable: records.output_identity)
    ratio: float | None  # error / bound


def observations(document: Mapping[str, Any]) -> dict[Key, Observed]:
    return {
        result_key(record): Observed(observed(record), output_identity(record), record.get("error_ratio"))
        for record in document["results"]
    }


def differs(a: Observed | None, b: Observed | None, compare: Compare, ratio_factor: float) -> bool:
    """Whether two observations of one check count as different under `compare`."""
    if a is None or b is None:
        return a is not b  # a check that only one run holds (a target that appeared, say)
    if a.outcome != b.outcome:
        return True
    if compare == "bits":
        return a.output is not None and b.output is not None and a.output != b.output
    if compare == "ratio" and a.ratio and b.ratio:
        return abs(math.log(b.ratio / a.ratio)) > math.log(ratio_factor)
    return False


# --- the registry and the runner, as the search sees them ---


class Registry(Protocol):
    def versions(self, package: str) -> list[str]:
        """Every release of `package` the registry offers (any order)."""
        ...


@dataclass(frozen=True)
class Ran:
    """One run of the selection on one release."""

    observations: dict[Key, Observed]
    installed: dict[str, str]  # the versions of the package and its companions in that environment
    results: Path | None  # its results file (for the diff at the boundary)
    seconds: float


@dataclass(frozen=True)
class Skipped:
    reason: str  # why the release could not be tested (did not install, did not import)


class Runner(Protocol):
    def run(self, version: str, repeat: int) -> Ran | Skipped:
        """Run the selection once on `version` (`repeat` numbers the runs of one release)."""
        ...


def _releases(versions: Iterable[str], pre: bool) -> list[tuple[Version, str]]:
    """The versions that are releases (pre-releases only if asked), oldest first; others left out."""
    parsed = []
    for text in set(versions):
        try:
            version = Version(text)
        except InvalidVersion:
            continue
        if pre or not (version.is_prerelease or version.is_devrelease):
            parsed.append((version, text))
    return sorted(parsed)


def releases_between(versions: Iterable[str], good: str, bad: str, pre: bool = False) -> list[str]:
    """The releases after `good` up to and including `bad`, oldest first (pre-releases only if asked)."""
    low, high = Version(good), Version(bad)
    if low >= high:
        raise BisectError(f"the good release {good} must be older than the bad one {bad}")
    return [text for version, text in _releases(versions, pre) if low < version <= high]


def newest(versions: Iterable[str]) -> str:
    found = _releases(versions, pre=False)
    if not found:
        raise BisectError("the registry lists no release to call the newest: give --bad VERSION")
    return found[-1][1]


# --- the search ---


@dataclass
class Trial:
    version: str
    repeat: int
    verdict: str  # "good" (as the good release), "differs", "skipped", or "reference" for the endpoints
    detail: str  # what differed, or why it was skipped
    outcomes: dict[str, int] = field(default_factory=dict)
    installed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class FlakyCheck:
    key: Key
    version: str
    seen: tuple[Observed, ...]  # what each run of that release observed


@dataclass
class Bisection:
    package: str
    good: str
    bad: str
    compare: Compare
    candidates: list[str]  # the releases after good up to bad, oldest first
    trials: list[Trial] = field(default_factory=list)
    flaky: list[FlakyCheck] = field(default_factory=list)
    known_flaky: list[Key] = field(default_factory=list)  # from a history of runs
    last_good: str | None = None
    first_bad: str | None = None
    untested: list[str] = field(default_factory=list)  # skipped releases between last_good and first_bad
    changed: list[tuple[Key, Observed | None, Observed | None]] = field(default_factory=list)  # at the boundary
    boundary: tuple[Path, Path] | None = None  # the two results files the answer rests on
    seconds: float = 0.0

    @property
    def runs(self) -> int:
        """Runs of the selection, skipped releases not counted."""
        return sum(1 for t in self.trials if t.verdict != "skipped")

    def answer(self) -> str:
        if self.first_bad is None:
            return "no answer"
        if self.untested:
            return (
                f"the first release that differs from {self.good} is {self.first_bad}, or one of the untested "
                f"{', '.join(self.untested)} before it (they did not install or import)"
            )
        last = "" if self.last_good == self.good else f"; the last one like it is {self.last_good}"
        return f"the first release that differs from {self.good} is {self.first_bad}{last}"


def search(
    package: str,
    good: str,
    bad: str,
    registry: Registry,
    runner: Runner,
    compare: Compare = "outcome",
    ratio_factor: float = 2.0,
    endpoint_repeats: int = 2,
    known_flaky: Iterable[Key] = (),
    pre: bool = False,
    excluded: Callable[[str], bool] = lambda version: False,
    log: Callable[[str], object] = lambda line: None,
) -> Bisection:
    """Find the first release after `good` whose checks differ from `good`'s. `excluded` releases
    (known broken: `--skip`) are never run, and count as untested where they could be the answer."""
    started = time.monotonic()
    result = Bisection(package, good, bad, compare, releases_between(registry.versions(package), good, bad, pre))
    result.known_flaky = sorted(set(known_flaky))
    if not result.candidates or result.candidates[-1] != bad:
        raise BisectError(f"the registry has no release {bad} of {package} after {good}")
    runs: dict[str, Ran] = {}

    def attempt(version: str, repeat: int) -> Ran | None:
        log(f"running the selection on {package} {version}" + (f" (run {repeat + 1})" if repeat else ""))
        ran = runner.run(version, repeat)
        if isinstance(ran, Skipped):
            result.trials.append(Trial(version, repeat, "skipped", ran.reason))
            log(f"  skipped: {ran.reason}")
            return None
        trial = Trial(version, repeat, "reference", "", _counts(ran), ran.installed, ran.seconds)
        result.trials.append(trial)
        runs.setdefault(version, ran)
        return ran

    endpoints: dict[str, list[Ran]] = {}
    for version in (good, bad):
        repeats: list[Ran] = []
        for repeat in range(max(1, endpoint_repeats)):
            ran = attempt(version, repeat)
            if ran is None:
                which = "good" if version == good else "bad"
                raise BisectError(f"the {which} release {version} cannot be tested: {result.trials[-1].detail}")
            repeats.append(ran)
        endpoints[version] = repeats
    if not endpoints[good][0].observations:
        raise BisectError(f"the selection ran no check on {package} {good} (is the selection empty?)")
    result.flaky = _flaky(endpoints, compare, ratio_factor)
    set_aside = {f.key for f in result.flaky} | set(result.known_flaky)
    reference = {k: v for k, v in endpoints[good][0].observations.items() if k not in set_aside}

    def differing(ran: Ran) -> list[Key]:
        keys = set(reference) | {k for k in ran.observations if k not in set_aside}
        return sorted(k for k in keys if differs(reference.get(k), ran.observations.get(k), compare, ratio_factor))

    changed_at_bad = differing(endpoints[bad][0])
    if not changed_at_bad:
        flaky_text = f"; {len(set_aside)} flaky check(s) set aside" if set_aside else ""
        raise BisectError(
            f"{package} {bad} does not differ from {good} in this selection{flaky_text}: nothing to bisect"
        )
    for trial in result.trials:
        trial.verdict = "good" if trial.version == good else "differs"

    last_good, first_bad = good, bad
    pool = [v for v in result.candidates if v != bad]
    for version in [v for v in pool if excluded(v)]:
        result.trials.append(Trial(version, 0, "skipped", "excluded (--skip)"))
        pool.remove(version)
    while pool:
        middle = pool[len(pool) // 2]
        ran = attempt(middle, 0)
        if ran is None:
            pool.remove(middle)  # try the new middle of what is left between the bounds
            continue
        found = differing(ran)
        trial = result.trials[-1]
        if found:
            trial.verdict, trial.detail = "differs", _examples(found)
            first_bad = middle
            pool = [v for v in pool if Version(v) < Version(middle)]
        else:
            trial.verdict = "good"
            last_good = middle
            pool = [v for v in pool if Version(v) > Version(middle)]
        log(f"  {trial.verdict}" + (f": {trial.detail}" if trial.detail else ""))
    result.last_good, result.first_bad = last_good, first_bad
    low, high = Version(last_good), Version(first_bad)
    skipped = [t.version for t in result.trials if t.verdict == "skipped" and low < Version(t.version) < high]
    result.untested = sorted(skipped, key=Version)
    before, after = runs[last_good], runs[first_bad]
    result.changed = [(k, reference.get(k), after.observations.get(k)) for k in differing(after)]
    if before.results and after.results:
        result.boundary = (before.results, after.results)
    result.seconds = time.monotonic() - started
    return result


def _counts(ran: Ran) -> dict[str, int]:
    return dict(sorted(Counter(o.outcome for o in ran.observations.values()).items()))


def _examples(keys: Sequence[Key], shown: int = 2) -> str:
    names = ", ".join(f"{case} [{target}, {dtype}]" for case, target, dtype in keys[:shown])
    return f"{len(keys)} check(s) differ: {names}" + (", ..." if len(keys) > shown else "")


def _flaky(endpoints: Mapping[str, list[Ran]], compare: Compare, ratio_factor: float) -> list[FlakyCheck]:
    """Checks whose repeats on one release disagree (outcome, or bits when bits are compared)."""
    found: list[FlakyCheck] = []
    mode: Compare = "outcome" if compare == "outcome" else "bits"
    for version, repeats in endpoints.items():
        keys = sorted({k for ran in repeats for k in ran.observations})
        for key in keys:
            seen = [ran.observations.get(key) for ran in repeats]
            if any(differs(seen[0], other, mode, ratio_factor) for other in seen[1:]):
                found.append(FlakyCheck(key, version, tuple(s for s in seen if s is not None)))
    return found


# --- the text a person reads ---


def render(result: Bisection, diff_limit: int = 20) -> str:
    lines = [
        f"bisect {result.package}: good {result.good}, bad {result.bad}, compared by {result.compare}",
        f"{len(result.candidates)} release(s) after {result.good} up to {result.bad}: {' '.join(result.candidates)}",
        "",
        "releases tried, in the order tried:",
    ]
    for trial in result.trials:
        run = f" (run {trial.repeat + 1})" if trial.repeat else ""
        installed = ", ".join(f"{k} {v}" for k, v in trial.installed.items())
        outcomes = ", ".join(f"{n} {o}" for o, n in trial.outcomes.items())
        lines.append(f"  {trial.version + run:<16} {trial.verdict:<8} {trial.seconds:6.0f} s  {outcomes}")
        if installed:
            lines.append(f"  {'':<16} installed: {installed}")
        if trial.detail:
            lines.append(f"  {'':<16} {trial.detail}")
    if result.known_flaky:
        lines.append(f"set aside as flaky by the history: {len(result.known_flaky)} check(s)")
    if result.flaky:
        lines.append(f"flaky, not bisected ({len(result.flaky)} check(s) whose repeats on one release disagree):")
        for flaky in result.flaky[:diff_limit]:
            seen = " / ".join(f"{s.outcome} {s.output or ''}".strip() for s in flaky.seen)
            lines.append(f"  {flaky.key[0]} [{flaky.key[1]}, {flaky.key[2]}] on {flaky.version}: {seen}")
    lines += [
        "",
        f"answer: {result.answer()}",
        f"{result.runs} run(s) of the selection, {sum(t.verdict == 'skipped' for t in result.trials)} release(s) "
        f"skipped, {result.seconds / 60:.1f} min",
        "",
        f"what differs at the boundary ({result.last_good} -> {result.first_bad}), by {result.compare}:",
    ]
    for key, before, after in result.changed[:diff_limit]:
        lines.append(f"  {key[0]} [{key[1]}, {key[2]}]: {_state(before)} -> {_state(after)}")
    if len(result.changed) > diff_limit:
        lines.append(f"  ... and {len(result.changed) - diff_limit} more")
    if result.boundary:
        try:
            base, new = (read_results(path) for path in result.boundary)
        except ResultsFileError as exc:
            lines.append(f"(no diff: {exc})")
        else:
            lines += ["", f"python -m conformance diff {result.boundary[0]} {result.boundary[1]}:"]
            lines.append(diffing.text_report(diffing.diff(base, new), limit=diff_limit))
    return "\n".join(lines) + "\n"


def _state(seen: Observed | None) -> str:
    if seen is None:
        return "absent"
    ratio = f" ratio {seen.ratio:.3g}" if seen.ratio is not None else ""
    bits = f" bits {seen.output}" if seen.output else ""
    return f"{seen.outcome}{ratio}{bits}"


# --- the real registry and environments ---


class PipRegistry:
    """Releases as pip sees them: `pip index versions`, from the sources pip is configured with."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    def versions(self, package: str) -> list[str]:
        done = subprocess.run(
            [self.python, "-m", "pip", "index", "versions", package],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        for line in done.stdout.splitlines():
            if line.startswith("Available versions:"):
                return [v.strip() for v in line.split(":", 1)[1].split(",") if v.strip()]
        raise BisectError(f"the registry lists no release of {package}: {_last_line(done.stderr or done.stdout)}")


# Packages that must move with the one under test, as requirements on its version.
COMPANIONS: dict[str, tuple[str, ...]] = {"jax": ("jaxlib=={version}",)}
# Packages its checks need that it does not depend on, at the checkout's constraints: Keras 3 runs
# on whichever backend is installed (TensorFlow and JAX here), and the ONNX Runtime target builds
# its models with onnx.
ALSO_NEEDED: dict[str, tuple[str, ...]] = {"keras": ("tensorflow-cpu", "jax", "jaxlib"), "onnxruntime": ("onnx",)}
# Constraints that every release under test may need at another version, left to the resolver:
# constraints.txt pins ml_dtypes for its import time, and older frameworks require older ones
# (TensorFlow 2.16: ml_dtypes~=0.3.1).
FOLLOW_THE_RELEASE = frozenset({"ml-dtypes"})
IMPORT_NAMES = {"tensorflow-cpu": "tensorflow", "onnxruntime-gpu": "onnxruntime"}
# Packages whose registry releases are GPU builds of several GB each (with their CUDA libraries):
# a bisection over them downloads one per release, so it must be asked for by name.
LARGE_BUILDS = {
    "torch": "PyPI's Linux torch wheels are CUDA builds (several GB each, with nvidia-* packages); point pip at "
    "CPU builds (an index or find-links in pip's configuration) and pass --allow-large-downloads",
}


@functools.cache  # (read once per bisection: every environment is made with the same sources)
def pip_sources() -> list[str]:
    """The options pip is configured with (find-links, indexes, constraints) as uv options: uv reads
    no pip configuration, and a machine's pip.conf may be what keeps a CPU-only torch in place."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
    )
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition("=")
        settings[name.split(".", 1)[-1]] = value.strip().strip("'\"")
    for name in ("index-url", "extra-index-url", "find-links", "constraint"):
        variable = f"PIP_{name.upper().replace('-', '_')}"
        if variable in os.environ:
            settings[name] = os.environ[variable]
    options: list[str] = []
    for name in ("index-url", "extra-index-url", "find-links", "constraint"):
        for value in settings.get(name, "").split():
            if value.startswith("file://") and not Path(value[len("file://") :]).exists():
                continue  # (a configured local index that is not there: pip warns and goes on, uv fails)
            options += [f"--{name}", value]
    # pip takes the best match across all its indexes; uv by default only the first index that has
    # the package, which hides older releases kept on a second one.
    return [*options, "--index-strategy", "unsafe-best-match"]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dilated-conformance" / "bisect-environments"


def tree_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the files under `path`, bytes of those no other directory links): uv links files
    from its cache, so most of an environment costs no disk of its own. Each file counts once."""
    seen: set[tuple[int, int]] = set()
    total = own = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                stat = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_blocks * 512
            own += stat.st_blocks * 512 if stat.st_nlink == 1 else 0
    return total, own


@dataclass
class ReleaseEnvironments:
    """One virtual environment per release (cached), and the selection run in it.

    An environment holds the harness (this checkout, editable), the package at exactly `version`,
    its companions, and every other package at the checkout's `constraints.txt`. It is made with uv
    where uv is installed (seconds: files are linked from uv's cache), with pip otherwise (pip has
    no overrides: a release whose neighbours pin another one of it then fails to install, and is
    skipped)."""

    package: str
    checkout: Path
    selection: list[str]
    output: Path
    cache: Path = field(default_factory=default_cache)
    extra: list[str] = field(default_factory=list)  # further requirements (`--with`)
    timeout_s: float = 3600.0
    python: str = sys.executable
    uv: str | None = field(default_factory=lambda: shutil.which("uv"))
    log: Callable[[str], object] = lambda line: None

    def requirements(self, version: str) -> list[str]:
        companions = [c.format(version=version) for c in COMPANIONS.get(self.package, ())]
        return [f"{self.package}=={version}", *companions, *ALSO_NEEDED.get(self.package, ()), *self.extra]

    def constraints(self) -> str:
        """The checkout's constraints, less the package under test, its companions and what follows the release."""
        moving = {self.package, *(c.split("=")[0] for c in COMPANIONS.get(self.package, ())), *FOLLOW_THE_RELEASE}
        path = self.checkout / "constraints.txt"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        kept = [line for line in lines if _requirement_name(line) not in moving]
        return "\n".join(kept) + "\n"

    def directory(self, version: str) -> Path:
        identity = json.dumps(
            [self.python, sys.version, str(self.checkout.resolve()), self.requirements(version), self.constraints()]
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
        return self.cache / f"{self.package}-{version}-{digest}"

    def prepare(self, version: str) -> tuple[Path, dict[str, str]] | Skipped:
        where = self.directory(version)
        ready = where / "conformance-ready.json"
        if ready.exists():
            installed: dict[str, str] = json.loads(ready.read_text(encoding="utf-8"))
            return where, installed
        shutil.rmtree(where, ignore_errors=True)  # a half-made one from a stopped bisection
        where.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"  making the environment {where.name} ({'uv' if self.uv else 'pip'})")
        made = self._make(where, version)
        if made is not None:
            shutil.rmtree(where, ignore_errors=True)
            return Skipped(f"does not install: {made}")
        python = str(where / "bin" / "python")
        module = IMPORT_NAMES.get(self.package, self.package.replace("-", "_"))
        imported = subprocess.run(
            [python, "-c", f"import {module}"], capture_output=True, text=True, timeout=600, check=False
        )
        if imported.returncode != 0:
            return Skipped(f"does not import: {_last_line(imported.stderr)}")  # (not marked ready: made anew next time)
        installed = self._installed(python, version)
        ready.write_text(json.dumps(installed), encoding="utf-8")
        return where, installed

    def _make(self, where: Path, version: str) -> str | None:
        """Build the environment; the reason in one line if it cannot be built."""
        constraints = where / "constraints.txt"
        requirements = self.requirements(version)
        if self.uv:
            steps = [[self.uv, "venv", "--quiet", "--python", self.python, str(where)]]
        else:
            steps = [[self.python, "-m", "venv", str(where)]]
        python = str(where / "bin" / "python")
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                return _last_line(done.stderr)
        constraints.write_text(self.constraints(), encoding="utf-8")
        if self.uv:
            overrides = where / "overrides.txt"
            overrides.write_text(f"{self.package}=={version}\n", encoding="utf-8")
            install = [self.uv, "pip", "install", "--quiet", "--python", python, *pip_sources()]
            install += ["--constraint", str(constraints), "--override", str(overrides)]
        else:
            install = [python, "-m", "pip", "install", "--quiet", "--constraint", str(constraints)]
        install += ["--editable", str(self.checkout), *requirements]
        done = subprocess.run(install, capture_output=True, text=True, timeout=1800, check=False)
        return None if done.returncode == 0 else _last_line(done.stderr or done.stdout)

    def _installed(self, python: str, version: str) -> dict[str, str]:
        names = [self.package, *(_requirement_name(r) for r in self.requirements(version)[1:])]
        script = (
            "import json, sys\nfrom importlib import metadata\nfound = {}\nfor name in sys.argv[1:]:\n"
            "    try:\n        found[name] = metadata.version(name)\n    except metadata.PackageNotFoundError:\n"
            "        pass\nprint(json.dumps(found))\n"
        )
        done = subprocess.run([python, "-c", script, *names], capture_output=True, text=True, timeout=120, check=False)
        try:
            found: dict[str, str] = json.loads(done.stdout)
        except ValueError:
            found = {self.package: version}
        return found

    def run(self, version: str, repeat: int) -> Ran | Skipped:
        prepared = self.prepare(version)
        if isinstance(prepared, Skipped):
            return prepared
        where, installed = prepared
        results = self.output / f"{self.package}-{version}-run{repeat + 1}.json"
        results.unlink(missing_ok=True)
        command = [str(where / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", "-q"]
        command += ["--conformance-json", str(results), "--conformance-html", "none", *self.selection]
        environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        environment["PATH"] = f"{where / 'bin'}{os.pathsep}{environment.get('PATH', '')}"
        started = time.monotonic()
        log_path = results.with_suffix(".log")
        with log_path.open("w", encoding="utf-8") as log:
            try:
                subprocess.run(
                    command, cwd=self.checkout, env=environment, stdout=log, stderr=subprocess.STDOUT,
                    timeout=self.timeout_s, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                return Skipped(f"the selection ran past {self.timeout_s:.0f} s (log: {log_path})")
        seconds = time.monotonic() - started
        try:
            document = read_results(results)
        except ResultsFileError as exc:
            return Skipped(f"the selection wrote no results ({exc}; log: {log_path})")
        found = observations(document)
        if not found:
            return Skipped(f"the selection ran no check there (log: {log_path})")
        return Ran(found, installed, results, seconds)


def _requirement_name(line: str) -> str:
    """The normalised name a requirement or constraint line names ("" for a comment or blank line)."""
    text = line.split("#", 1)[0].strip()
    try:
        return canonicalize_name(Requirement(text).name) if text else ""
    except InvalidRequirement:  # (an option line such as --index-url: names no package)
        return ""
