"""Segmentation heads: DeepLabV3 (ASPP on the high-level map) and the V3+ decoder."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deeplab.aspp import ASPP
from deeplab.features import FeatureInfo, Features
from deeplab.layers import ConvBNReLU, conv3x3_block

ASPP_CHANNELS = 256
LOW_LEVEL_CHANNELS = 48


class DeepLabV3Head(nn.Module):
    """ASPP, a 3x3 conv block, a 1x1 classifier; logits at the output stride."""

    align_corners: ClassVar[bool] = False  # how DeepLab upsamples the logits to the input size

    def __init__(
        self,
        info: FeatureInfo,
        num_classes: int,
        *,
        rates: Sequence[int],
        dropout: float,
        separable: bool,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(info.high_channels, rates, dropout=dropout, separable=separable)
        self.block = conv3x3_block(ASPP_CHANNELS, ASPP_CHANNELS, separable=separable)
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)

    def forward(self, features: Features) -> Tensor:
        out: Tensor = self.classifier(self.block(self.aspp(features.high)))
        return out


class DeepLabV3PlusHead(nn.Module):
    """ASPP plus the V3+ decoder; logits at stride 4.

    Low-level features are projected to 48 channels so they don't outweigh the 256 ASPP channels
    (V3+ paper, sec. 3.1), then concatenated *first* with the upsampled ASPP output. The order is
    arbitrary for a trained network; low-level-first lets VainF checkpoints load by renaming alone.
    """

    align_corners: ClassVar[bool] = False

    def __init__(
        self,
        info: FeatureInfo,
        num_classes: int,
        *,
        rates: Sequence[int],
        dropout: float,
        separable: bool,
        decoder_convs: int,
    ) -> None:
        super().__init__()
        if decoder_convs < 1:
            raise ValueError(f"decoder_convs must be at least 1, got {decoder_convs}")
        self.aspp = ASPP(info.high_channels, rates, dropout=dropout, separable=separable)
        self.low_level = ConvBNReLU(info.low_channels, LOW_LEVEL_CHANNELS, 1)
        widths = [LOW_LEVEL_CHANNELS + ASPP_CHANNELS] + [ASPP_CHANNELS] * decoder_convs
        self.fuse = nn.Sequential(
            *(conv3x3_block(cin, cout, separable=separable) for cin, cout in pairwise(widths))
        )
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)

    def forward(self, features: Features) -> Tensor:
        low = self.low_level(features.low)
        high = F.interpolate(
            self.aspp(features.high), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        out: Tensor = self.classifier(self.fuse(torch.cat([low, high], dim=1)))
        return out


class FCNHead(nn.Sequential):
    """Auxiliary head on an intermediate stage (torchvision's layout); a training aid only."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )
