"""DeepLabV3 / V3+ heads in segmentation_models_pytorch's layout, so smp weights give smp's
outputs.

Where they differ from :mod:`deeplab.heads`, and why each matters for the outputs:

- separable convs have no BN+ReLU between depthwise and pointwise
  (:class:`~deeplab.layers.DepthwisePointwiseBNReLU`);
- the V3+ decoder runs one more separable conv block on the ASPP output, upsamples it with
  ``align_corners=True``, concatenates it *before* the 48-channel low-level projection and fuses
  with a single separable conv block (whatever ``separable`` says for the ASPP);
- logits go to the input size with ``align_corners=True`` (smp upsamples by a fixed factor that
  way), which :attr:`align_corners` tells :class:`~deeplab.model.DeepLab` and the Predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deeplab.aspp import ASPP
from deeplab.features import FeatureInfo, Features
from deeplab.heads import ASPP_CHANNELS, LOW_LEVEL_CHANNELS
from deeplab.layers import ConvBNReLU, DepthwisePointwiseBNReLU


class SmpDeepLabV3Head(nn.Module):
    """ASPP (smp's separable branches when ``separable``), a plain 3x3 conv block, a 1x1
    classifier; logits at the output stride."""

    align_corners: ClassVar[bool] = True

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
        self.aspp = ASPP(
            info.high_channels, rates, dropout=dropout, separable=separable, depthwise_bn=False
        )
        self.block = ConvBNReLU(ASPP_CHANNELS, ASPP_CHANNELS, 3)
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)

    def forward(self, features: Features) -> Tensor:
        out: Tensor = self.classifier(self.block(self.aspp(features.high)))
        return out


class SmpDeepLabV3PlusHead(nn.Module):
    """ASPP, a separable block, upsampling to stride 4, [ASPP, low-level] concat, one separable
    block, a 1x1 classifier; logits at stride 4."""

    align_corners: ClassVar[bool] = True

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
        self.aspp = ASPP(
            info.high_channels, rates, dropout=dropout, separable=separable, depthwise_bn=False
        )
        self.aspp_block = DepthwisePointwiseBNReLU(ASPP_CHANNELS, ASPP_CHANNELS)
        self.low_level = ConvBNReLU(info.low_channels, LOW_LEVEL_CHANNELS, 1)
        self.fuse = DepthwisePointwiseBNReLU(ASPP_CHANNELS + LOW_LEVEL_CHANNELS, ASPP_CHANNELS)
        self.classifier = nn.Conv2d(ASPP_CHANNELS, num_classes, 1)

    def forward(self, features: Features) -> Tensor:
        low = self.low_level(features.low)
        high = F.interpolate(
            self.aspp_block(self.aspp(features.high)),
            size=low.shape[-2:],
            mode="bilinear",
            align_corners=True,
        )
        out: Tensor = self.classifier(self.fuse(torch.cat([high, low], dim=1)))
        return out
