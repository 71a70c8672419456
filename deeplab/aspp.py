"""Atrous Spatial Pyramid Pooling (DeepLabV3, sec. 3.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deeplab.features import check_output_stride
from deeplab.layers import ConvBNReLU, conv3x3_block

PAPER_RATES_OS16 = (6, 12, 18)


def paper_rates(output_stride: int) -> tuple[int, int, int]:
    """The paper's rates (6, 12, 18) at OS16, doubled at OS8 and halved at OS32, so every branch
    keeps the same field of view in input pixels."""
    check_output_stride(output_stride)
    return tuple(r * 16 // output_stride for r in PAPER_RATES_OS16)  # type: ignore[return-value]


class ASPPPooling(nn.Sequential):
    """Image-level features: global average, 1x1 conv, broadcast back to the map size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        for module in self:
            x = module(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """One 1x1 branch, one 3x3 atrous branch per rate, image pooling; concat, 1x1 to
    ``out_channels``, dropout. ``depthwise_bn`` as in :func:`conv3x3_block`."""

    def __init__(
        self,
        in_channels: int,
        rates: Sequence[int],
        *,
        out_channels: int = 256,
        dropout: float = 0.1,
        separable: bool = False,
        depthwise_bn: bool = True,
    ) -> None:
        super().__init__()
        if len(rates) != 3 or any(r < 1 for r in rates):
            raise ValueError(f"aspp_rates must be three positive integers, got {tuple(rates)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"aspp_dropout must be in [0, 1), got {dropout}")
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [
            conv3x3_block(
                in_channels,
                out_channels,
                dilation=r,
                separable=separable,
                depthwise_bn=depthwise_bn,
            )
            for r in rates
        ]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.rates = tuple(rates)
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
        return out
