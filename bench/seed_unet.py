"""The seed project's parser architecture, rebuilt in plain torch for latency comparisons.

The seed used segmentation_models_pytorch's ``Unet("resnext101_32x8d")``. torchvision, timm and
smp are not installable here, so this file writes the same network out by hand:

* encoder: ResNeXt-101 32x8d (torchvision layout: 7x7 stem, bottlenecks with the stride on the
  grouped 3x3 conv, ``groups=32``, ``width_per_group=8``, ``layers=[3, 4, 23, 3]``), without the
  classifier; ``tests/test_bench_models.py`` checks its parameter count against torchvision's;
* decoder: smp's U-Net decoder, ``decoder_channels=(256, 128, 64, 32, 16)``, each block
  "upsample x2, concatenate the skip, two 3x3 conv-BN-ReLU", then a 3x3 segmentation head.

Only timing is measured, so weights stay random; nothing here is trained or downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

RESNEXT101_LAYERS = (3, 4, 23, 3)
DECODER_CHANNELS = (256, 128, 64, 32, 16)
# ImageNet statistics on 0..1 inputs, as the seed normalised its photos.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    """ResNeXt bottleneck: 1x1 reduce, grouped 3x3 (carries the stride), 1x1 expand (x4)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, groups: int, width_per_group: int):
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(y + identity)


class ResNeXtEncoder(nn.Module):
    """ResNeXt without avgpool/fc; ``features`` returns the maps at strides 2, 4, 8, 16, 32."""

    def __init__(
        self,
        layers: Sequence[int] = RESNEXT101_LAYERS,
        groups: int = 32,
        width_per_group: int = 8,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        cin = 64
        stages: list[nn.Sequential] = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for b in range(n):
                stride = 2 if i > 0 and b == 0 else 1
                blocks.append(Bottleneck(cin, planes, stride, groups, width_per_group))
                cin = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = (64, 256, 512, 1024, 2048)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = F.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.conv1 = ConvBNReLU(cin + skip, cout)
        self.conv2 = ConvBNReLU(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: torch.Size) -> torch.Tensor:
        # Upsampling to the skip's exact size (not a blind x2) lets sides that are not
        # multiples of 32, such as 720, through; smp would require padding them to 736.
        # Plain ints: an ONNX export then gets fixed sizes, as the input size is fixed.
        x = F.interpolate(x, size=(int(size[0]), int(size[1])), mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class SeedUNet(nn.Module):
    """U-Net on ResNeXt-101 32x8d. Input float RGB 0..255 NCHW; output logits at input size."""

    def __init__(
        self,
        num_classes: int = 14,
        decoder_channels: Sequence[int] = DECODER_CHANNELS,
        layers: Sequence[int] = RESNEXT101_LAYERS,
    ):
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels needs 5 entries, got {len(decoder_channels)}")
        self.encoder = ResNeXtEncoder(layers)
        enc = self.encoder.out_channels
        # smp's wiring: the deepest map is the head; the other four are skips, deepest first;
        # the last block (back to full resolution) has no skip.
        skips = [enc[3], enc[2], enc[1], enc[0], 0]
        ins = [enc[4], *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels, strict=True)
        )
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) / self.std
        feats = self.encoder.features(x)
        skips: list[torch.Tensor | None] = [feats[3], feats[2], feats[1], feats[0], None]
        sizes = [f.shape[-2:] for f in (feats[3], feats[2], feats[1], feats[0])]
        sizes.append(image.shape[-2:])
        y = feats[4]
        for block, skip, size in zip(self.blocks, skips, sizes, strict=True):
            y = block(y, skip, size)
        return self.head(y)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
