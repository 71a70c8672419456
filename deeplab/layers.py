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


class DepthwisePointwise(nn.Sequential):
    """Depthwise kxk conv then pointwise 1x1, nothing between (plain Xception's separable conv).

    segmentation_models_pytorch builds its separable convs this way; its weights need it.
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
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class DepthwisePointwiseBNReLU(nn.Sequential):
    """:class:`DepthwisePointwise`, then BN and ReLU once (smp's layout: ``0.0`` depthwise,
    ``0.1`` pointwise, ``1`` BN)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1
    ) -> None:
        super().__init__(
            DepthwisePointwise(in_channels, out_channels, kernel_size, dilation),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


def conv3x3_block(
    in_channels: int,
    out_channels: int,
    *,
    dilation: int = 1,
    separable: bool,
    depthwise_bn: bool = True,
) -> nn.Sequential:
    """A 3x3 conv block, depthwise separable or not: the one choice ASPP and decoders expose.

    ``depthwise_bn`` False drops the BN+ReLU between depthwise and pointwise (smp's layout).
    """
    if separable and depthwise_bn:
        return SeparableConvBNReLU(in_channels, out_channels, 3, dilation)
    if separable:
        return DepthwisePointwiseBNReLU(in_channels, out_channels, 3, dilation)
    return ConvBNReLU(in_channels, out_channels, 3, dilation)
