"""What a check may end in before any answer is judged, and the one mapping of it to an outcome.

An adapter, a child process or the harness raises one of these; every kind of check (a case's,
a composite's) maps them through `refusal_verdict`, so "unsupported", "skip" and "crash" mean the
same wherever they are decided. Any other exception a framework raises is a finding: the judge
sees it (`compare.classify`), the mapping does not.
"""

from __future__ import annotations

from conformance.compare import Outcome, Verdict


class Unavailable(Exception):
    """The framework or device is not present here: the item is skipped with this reason."""


class ProcessDied(RuntimeError):
    """The process the framework runs in (a child of this one) died during the call: `crash`, never a
    raised error, which a case with no valid output would count as conformant."""


class Unsupported(Exception):
    """This formulation cannot express the case, decided from the data or the call (e.g. a zero-inserted
    kernel with infinite input, where inf * 0 is NaN; a layer of a composite the API cannot state)."""


REFUSALS: tuple[type[Exception], ...] = (Unavailable, Unsupported, ProcessDied)
_OUTCOMES = {Unavailable: Outcome.SKIP, Unsupported: Outcome.UNSUPPORTED, ProcessDied: Outcome.CRASH}


def refusal_verdict(exc: Exception, context: str = "") -> Verdict:
    """The verdict of a refusal (one of REFUSALS), its message prefixed by `context` where given."""
    for kind, outcome in _OUTCOMES.items():
        if isinstance(exc, kind):
            return Verdict(outcome, f"{context}{exc}")
    raise TypeError(f"not a refusal: {type(exc).__name__}: {exc}")
