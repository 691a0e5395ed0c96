"""Where and how a target runs: its devices and precision modes, whether this machine has a GPU
at all, and the one conversion of a framework's answer into the NumPy array the classifier judges.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from conformance.dtypes import float_format

DEVICES = ("cpu", "gpu")
# strict: TF32 and reduced-precision reductions off; defaults: whatever the framework does out of the box.
PRECISION_MODES = ("strict", "defaults")
# Device nodes a GPU driver creates (NVIDIA, AMD ROCm, WSL2). Where none exists no framework can
# reach a GPU, which the harness can tell without importing one.
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


# The GPU kit's dry run (benchmarks/gpu/run.sh on a machine without one): every GPU target runs
# on the CPU under its GPU id, so the kit's whole path (selection, results, merge, report,
# account) is exercised where CI runs. Records and the environment say so (`gpu_stand_in`).
GPU_STAND_IN_VARIABLE = "CONFORMANCE_GPU_STAND_IN"


def gpu_stand_in() -> str | None:
    """ "cpu" where GPU targets run on the CPU (the kit's dry run), else None."""
    return "cpu" if os.environ.get(GPU_STAND_IN_VARIABLE) == "cpu" else None


def physical_device(device: str) -> str:
    """Where a target's device really is: "gpu" is the CPU in the kit's dry run."""
    return "cpu" if device == "gpu" and gpu_stand_in() else device


def gpu_driver_present() -> bool:
    return gpu_stand_in() is not None or any(Path(node).exists() for node in GPU_DEVICE_NODES)


def no_gpu_reason() -> str | None:
    """Why no GPU target can run on this machine, or None when a GPU driver is present."""
    if gpu_driver_present():
        return None
    return f"no GPU on this machine (none of {', '.join(GPU_DEVICE_NODES)} exists)"


def numpy_output(values: Any, dtype_name: str) -> np.ndarray:
    """A framework's answer (already a NumPy array, or anything `np.asarray` takes) in the NumPy type
    of the framework's own output dtype, named as the framework names it ("float32", "bfloat16"):
    the classifier then sees the framework's dtype, not one the harness chose."""
    return np.asarray(values).astype(float_format(dtype_name).numpy_dtype)
