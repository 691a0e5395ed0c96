"""A DeepLab v3 style segmentation head, in Keras and in torch, the same architecture in each:
a strided stem, a backbone whose last stages are dilated (rates 2 and 4, output stride 2 here
instead of 8 to stay small), ASPP at rates 6, 12 and 18 beside a 1x1 branch, a depthwise-separable
rate-6 branch (DeepLab v3+) and image pooling, a 1x1 projection, a transposed-convolution upsampling
and a 1x1 classifier. Input 1x33x33x3 (NHWC), weights as each framework initialises them.

    python examples/deeplab_v3.py OUT_DIR     # writes OUT_DIR/deeplab_v3.keras and OUT_DIR/deeplab_v3.onnx

The torch module is `examples.deeplab_v3:torch_model` for `from-model` (run from the repository root);
the ONNX file is that module exported by torch.onnx.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

INPUT_SHAPE = (1, 33, 33, 3)  # NHWC
ASPP_RATES = (6, 12, 18)
CLASSES = 5


def keras_model() -> Any:
    import keras
    from keras import layers

    inputs = keras.Input(INPUT_SHAPE[1:], batch_size=INPUT_SHAPE[0])
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem")(inputs)  # 17x17
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stage2")(x)
    x = layers.Conv2D(32, 3, padding="same", dilation_rate=2, activation="relu", name="stage3_r2")(x)
    x = layers.Conv2D(32, 3, padding="same", dilation_rate=4, activation="relu", name="stage4_r4")(x)
    branches = [layers.Conv2D(16, 1, activation="relu", name="aspp_1x1")(x)]
    for rate in ASPP_RATES:
        branches.append(
            layers.Conv2D(16, 3, padding="same", dilation_rate=rate, activation="relu", name=f"aspp_r{rate}")(x)
        )
    branches.append(layers.SeparableConv2D(16, 3, padding="same", dilation_rate=6, name="aspp_separable_r6")(x))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="image_pool")(x)
    pooled = layers.Conv2D(16, 1, activation="relu", name="aspp_pool")(pooled)
    branches.append(layers.UpSampling2D(17, name="pool_up")(pooled))
    y = layers.Conv2D(16, 1, activation="relu", name="project")(layers.Concatenate(name="aspp")(branches))
    y = layers.Conv2DTranspose(8, 4, strides=2, padding="same", name="decoder_up")(y)  # 34x34
    outputs = layers.Conv2D(CLASSES, 1, name="classifier")(y)
    return keras.Model(inputs, outputs, name="deeplab_v3_head")


def torch_model() -> Any:
    import torch
    from torch import nn

    class DeepLabV3Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)  # 17x17
            self.stage2 = nn.Conv2d(16, 16, 3, padding="same")
            self.stage3_r2 = nn.Conv2d(16, 32, 3, padding="same", dilation=2)
            self.stage4_r4 = nn.Conv2d(32, 32, 3, padding="same", dilation=4)
            self.aspp_1x1 = nn.Conv2d(32, 16, 1)
            self.aspp = nn.ModuleList(nn.Conv2d(32, 16, 3, padding="same", dilation=r) for r in ASPP_RATES)
            self.aspp_separable_depthwise = nn.Conv2d(32, 32, 3, padding="same", dilation=6, groups=32)
            self.aspp_separable_pointwise = nn.Conv2d(32, 16, 1)
            self.aspp_pool = nn.Conv2d(32, 16, 1)
            self.project = nn.Conv2d(96, 16, 1)
            self.decoder_up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)  # 34x34
            self.classifier = nn.Conv2d(8, CLASSES, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            relu = torch.relu
            x = relu(self.stage4_r4(relu(self.stage3_r2(relu(self.stage2(relu(self.stem(x))))))))
            branches = [relu(self.aspp_1x1(x)), *(relu(conv(x)) for conv in self.aspp)]
            branches.append(self.aspp_separable_pointwise(self.aspp_separable_depthwise(x)))
            pooled = relu(self.aspp_pool(x.mean(dim=(2, 3), keepdim=True)))
            branches.append(pooled.expand(-1, -1, x.shape[2], x.shape[3]))
            y = relu(self.project(torch.cat(branches, dim=1)))
            return self.classifier(self.decoder_up(y))

    torch.manual_seed(0)
    return DeepLabV3Head()


def save(out_dir: Path) -> tuple[Path, Path]:
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    keras_path, onnx_path = out_dir / "deeplab_v3.keras", out_dir / "deeplab_v3.onnx"
    keras_model().save(keras_path)
    n, h, w, c = INPUT_SHAPE
    torch.onnx.export(torch_model().eval(), (torch.zeros(n, c, h, w),), str(onnx_path), opset_version=17, dynamo=False)
    return keras_path, onnx_path


if __name__ == "__main__":
    for path in save(Path(sys.argv[1] if len(sys.argv) > 1 else "models")):
        print(path)
