"""Where and how a target runs: its devices and precision modes, whether this machine has a GPU
at all, and the one conversion of a framework's answer into the NumPy array the classifier judges.
"""

from __future__ import annotations

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


def gpu_driver_present() -> bool:
    return any(Path(node).exists() for node in GPU_DEVICE_NODES)


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
