"""torchvision's segmentation networks, built without weights (nothing is downloaded), for
`python -m conformance from-model examples.torchvision_models:NAME --input-shape 1,129,129,3`:

- `deeplabv3_resnet50`: ResNet-50 with dilated stages (rates 2 and 4) and ASPP at 12, 24 and 36
  on 2,048 channels, the network of the reference documents;
- `deeplabv3_mobilenet_v3_large`: MobileNetV3's depthwise blocks, dilated in its last stage, and
  the same ASPP on 960 channels;
- `fcn_resnet50`: the fully convolutional network on the dilated ResNet-50.

The case files in cases/models/ were written from these at 129 x 129 (a 17 x 17 map at the ASPP).
"""

from __future__ import annotations

import sys
import types
from typing import Any


def _segmentation() -> Any:
    """torchvision.models.segmentation. The registry's torchvision wheels are built against CUDA
    torch; beside a CPU torch their C operators (nms, roi_align) cannot load, and importing
    torchvision then fails registering those operators' fake kernels. No model here uses them,
    so that registration is left out where it would fail."""
    try:
        import torchvision
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision.models.segmentation


def deeplabv3_resnet50() -> Any:
    return _segmentation().deeplabv3_resnet50(weights=None, weights_backbone=None).eval()


def deeplabv3_mobilenet_v3_large() -> Any:
    return _segmentation().deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None).eval()


def fcn_resnet50() -> Any:
    return _segmentation().fcn_resnet50(weights=None, weights_backbone=None).eval()
