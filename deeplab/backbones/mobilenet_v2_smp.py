"""MobileNetV2 as segmentation_models_pytorch's encoder has it, whose checkpoints teams train.

Three details differ from the VainF variant in ``mobilenet_v2.py``, and each changes outputs:
torchvision's standard padding, the final 1x1 conv to 1280 channels kept (the ASPP reads it),
and dilation applied to every conv of a dilated stage, its first block's included (smp's
``make_dilated``; see :func:`deeplab.features.dilate_every_conv`).
"""

from __future__ import annotations

from itertools import accumulate, pairwise

from torch import Tensor
from torchvision.models import mobilenet_v2

from deeplab.backbones.mobilenet_v2 import SETTING
from deeplab.features import Backbone, FeatureInfo, Features, atrous_schedule, dilate_every_conv

_LOW = 3  # features[3] ends the stride-4 stage (24 channels)
_LAST_CHANNELS = 1280


class SmpMobileNetV2Backbone(Backbone):
    """torchvision's ``mobilenet_v2().features`` (keys ``features.0`` .. ``features.18``):
    low-level features after ``features[3]`` (stride 4), high after ``features[18]``."""

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        self.features = mobilenet_v2(weights=None).features
        schedule = atrous_schedule([2] + [s for _, _, _, s in SETTING], output_stride)
        ends = list(accumulate((n for _, _, n, _ in SETTING), initial=1))  # block 0 is the stem
        ends[-1] = len(self.features)  # the 1x1 conv to 1280 goes with the last stage
        for (start, end), stage in zip(pairwise(ends), schedule[1:], strict=True):
            if stage.dilation > 1:
                for block in self.features[start:end]:
                    dilate_every_conv(block, stage.dilation)
        self.output_stride = output_stride
        self.feature_info = FeatureInfo(
            low_channels=24, high_channels=_LAST_CHANNELS, aux_channels=None
        )

    def forward(self, x: Tensor) -> Features:
        low = self.features[: _LOW + 1](x)
        return Features(low=low, high=self.features[_LOW + 1 :](low), aux=None)
