"""MobileNetV3-Large (torchvision's blocks), later stages dilated for OS16 or OS8."""

from __future__ import annotations

from torch import Tensor
from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

from deeplab.features import Backbone, FeatureInfo, Features, check_output_stride

# MobileNetV3 paper, Table 1: input, kernel, expanded, output, SE, activation, stride.
_LARGE = [
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
]
_STEM_STRIDE = 2
# Positions in ``features``: 0 is the stem, 1..15 the rows above, 16 the 1x1 conv to 960.
_LOW, _AUX = 3, 4


def _settings(output_stride: int) -> list[InvertedResidualConfig]:
    """Rows whose running stride would pass ``output_stride`` get stride 1 and the missing factor
    as dilation, the first row of the stage included (torchvision's ``dilated=True`` layout)."""
    check_output_stride(output_stride)
    settings, stride = [], _STEM_STRIDE
    for cin, kernel, expanded, cout, se, act, s in _LARGE:
        stride *= s
        dilation = max(1, stride // output_stride)
        settings.append(
            InvertedResidualConfig(cin, kernel, expanded, cout, se, act, s, dilation, 1.0)
        )
    return settings


class MobileNetV3LargeBackbone(Backbone):
    """Low-level features after the second 24-channel block (stride 4), auxiliary after the first
    40-channel block (stride 8, torchvision's choice), high after the 960-channel 1x1 conv."""

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        self.features = MobileNetV3(_settings(output_stride), last_channel=1280).features
        self.output_stride = output_stride
        self.feature_info = FeatureInfo(low_channels=24, high_channels=960, aux_channels=40)

    def forward(self, x: Tensor) -> Features:
        low = aux = x
        for index, block in enumerate(self.features):
            x = block(x)
            if index == _LOW:
                low = x
            elif index == _AUX:
                aux = x
        return Features(low=low, high=x, aux=aux)
