"""Conv blocks shared by the heads and backbones.

Blocks are ``nn.Sequential`` so their parameter names (``0.weight``, ``1.running_mean``) line up
with torchvision's and VainF's, which keeps checkpoint conversion a matter of prefix renames.
"""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv (no bias, BN follows), BatchNorm, ReLU; ``padding = dilation * (k // 2)`` keeps size."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise kxk conv, BN, ReLU, then pointwise 1x1, BN, ReLU (DeepLabV3+ paper, sec. 3.2).

    The BN+ReLU between depthwise and pointwise is what the paper adds over plain Xception.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                padding=dilation * (kernel_size // 2),
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


def conv3x3_block(
    in_channels: int, out_channels: int, *, dilation: int = 1, separable: bool
) -> nn.Sequential:
    """A 3x3 conv block, depthwise separable or not: the one choice ASPP and decoders expose."""
    if separable:
        return SeparableConvBNReLU(in_channels, out_channels, 3, dilation)
    return ConvBNReLU(in_channels, out_channels, 3, dilation)
