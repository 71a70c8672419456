"""MobileNetV2 in the layout of VainF/DeepLabV3Plus-Pytorch, whose checkpoints people have.

Two details differ from torchvision's MobileNetV2 and change every output: each inverted
residual block pads its *input* (before the 1x1 expansion) and its convs use no padding, and the
stem conv has no padding at all. They are kept so VainF weights give VainF's outputs.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from deeplab.features import Backbone, FeatureInfo, Features, atrous_schedule

# MobileNetV2 paper, Table 2: expansion t, channels c, repeats n, stride s.
SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
_STEM_CHANNELS = 32
_LOW = 3  # features[3] ends the stride-4 stage (24 channels)


class ConvBNReLU6(nn.Sequential):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                0,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, stride: int, dilation: int, expand: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, 1))
        layers += [
            ConvBNReLU6(hidden, hidden, 3, stride, dilation, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels
        self.padding = (dilation, dilation, dilation, dilation)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(F.pad(x, self.padding))
        return x + out if self.residual else out


class MobileNetV2Backbone(Backbone):
    """Low-level features after ``features[3]`` (stride 4, 24 channels), high after the 320-channel
    block; VainF drops the final 1x1 conv to 1280, and so do we."""

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        schedule = atrous_schedule([2] + [s for _, _, _, s in SETTING], output_stride)
        blocks: list[nn.Module] = [ConvBNReLU6(3, _STEM_CHANNELS, 3, stride=2)]
        cin = _STEM_CHANNELS
        for (expand, cout, repeats, _), stage in zip(SETTING, schedule[1:], strict=True):
            for i in range(repeats):
                first = i == 0
                blocks.append(
                    InvertedResidual(
                        cin,
                        cout,
                        stage.stride if first else 1,
                        stage.first_dilation if first else stage.dilation,
                        expand,
                    )
                )
                cin = cout
        self.features = nn.Sequential(*blocks)
        self.output_stride = output_stride
        self.feature_info = FeatureInfo(low_channels=24, high_channels=320, aux_channels=None)

    def forward(self, x: Tensor) -> Features:
        low = self.features[: _LOW + 1](x)
        return Features(low=low, high=self.features[_LOW + 1 :](low), aux=None)
