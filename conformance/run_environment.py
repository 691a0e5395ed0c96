"""What a run records of where it ran: the machine, the interpreter, the installed frameworks (read
from package metadata, so no framework is imported for it), and the short label a run is known by.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from conformance import frameworks, machine, profiles
from conformance.adapters.modes import gpu_stand_in


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def base_environment() -> dict[str, Any]:
    """What can be known without importing any framework (cheap: read from package metadata), for
    every framework known to this process (conformance/frameworks.py)."""
    known = frameworks.known()
    packages = {}
    for name in dict.fromkeys(package for framework in known for package in framework.packages):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        # What decides which kernels the frameworks take here (known divergences are judged by it).
        "cpu_features": machine.machine_environment(),
        "profile": profiles.current() or profiles.HOST,
        # The GPU kit's dry run: "gpu" targets ran on the CPU (conformance/adapters/modes.py).
        **({"gpu_stand_in": stand_in} if (stand_in := gpu_stand_in()) else {}),
        "packages": packages,
        "framework_versions": frameworks.installed_versions(known),
        "frameworks": {},
    }


def framework_versions(environment: Mapping[str, Any]) -> dict[str, str]:
    """Framework name -> version of a recorded run's environment."""
    versions = environment.get("framework_versions")
    if isinstance(versions, dict):
        return {str(name): str(version) for name, version in versions.items() if version is not None}
    # Results written before frameworks were recorded by name: read the packages.
    packages = environment.get("packages") or {}
    return {
        framework.name: str(packages[found])
        for framework in frameworks.known()
        if (found := next((d for d in framework.distributions if d in packages), None))
    }


def run_label(environment: dict[str, Any]) -> str:
    """A short name for a run: its machine, its profile unless the host's, and the framework versions it ran."""
    versions = frameworks.versions_line(framework_versions(environment))
    gpus = [
        d
        for info in environment.get("frameworks", {}).values()
        for d in info.get("devices", [])
        if "cpu" not in str(d).lower()
    ]
    profile = environment.get("profile")
    shown = f" [{profile}]" if profile and profile != profiles.HOST else ""
    return f"{environment.get('cpu', '?')}{' + ' + gpus[0] if gpus else ''}{shown}; {versions}".strip()
