"""Hooks the conformance plugin offers to conftest files and other plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conformance.adapters import Adapter


@pytest.hookspec
def pytest_conformance_adapters(config: pytest.Config) -> list[Adapter]:  # type: ignore[empty-body]
    """Adapters to run beside the built-in ones, e.g. a build under test, or the harness's own
    fault-injection adapters. Called on the controller and on every xdist worker, so it must
    return the same adapters everywhere."""
