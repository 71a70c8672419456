"""Aligned Xception-65 of the DeepLabV3+ paper (sec. 3.2, Fig. 4).

Changes from Xception that the paper makes: more layers (16 middle-flow units), every max pooling
replaced by a strided depthwise separable conv (so it can become atrous), and BN + ReLU after each
depthwise conv.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from deeplab.features import Backbone, FeatureInfo, Features, atrous_schedule

Skip = Literal["conv", "sum", "none"]
_MIDDLE_UNITS = 16


class XceptionSeparableConv(nn.Sequential):
    """Depthwise 3x3 (strided or atrous), BN, ReLU, pointwise 1x1, BN.

    Entry and middle flows apply ReLU *before* each separable conv (``relu_first``); the last exit
    block applies it after instead (DeepLab's ``activation_fn_in_separable_conv``).
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, dilation: int, relu_first: bool
    ) -> None:
        layers: list[nn.Module] = [nn.ReLU()] if relu_first else []
        layers += [
            nn.Conv2d(
                in_channels,
                in_channels,
                3,
                stride,
                padding=dilation,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if not relu_first:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class XceptionUnit(nn.Module):
    """Three separable convs (the last one strided) plus a shortcut: 1x1 conv, identity or none."""

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, int, int],
        *,
        stride: int,
        dilation: int,
        skip: Skip,
        relu_first: bool = True,
    ) -> None:
        super().__init__()
        ins = (in_channels, *widths[:2])
        self.convs = nn.ModuleList(
            XceptionSeparableConv(cin, cout, stride if i == 2 else 1, dilation, relu_first)
            for i, (cin, cout) in enumerate(zip(ins, widths, strict=True))
        )
        self.skip = skip
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(in_channels, widths[2], 1, stride, bias=False),
                nn.BatchNorm2d(widths[2]),
            )
            if skip == "conv"
            else None
        )

    def forward_with_inner(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The unit's output and the output of its second conv (before the strided third one)."""
        inner = self.convs[1](self.convs[0](x))
        out = self.convs[2](inner)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        elif self.skip == "sum":
            out = out + x
        return out, inner

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_inner(x)[0]


class Xception65Backbone(Backbone):
    """Low-level features from the second conv of entry block 2 (stride 4, 256 channels), as in
    DeepLab's reference; high-level from the end of the exit flow (2048 channels)."""

    def __init__(self, output_stride: int) -> None:
        super().__init__()
        # stem conv1, entry blocks 1-3, middle flow, exit blocks 1-2
        b1, b2, b3, mid, x1, x2 = atrous_schedule([2, 2, 2, 2, 1, 2, 1], output_stride)[1:]
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.entry1 = XceptionUnit(
            64, (128,) * 3, stride=b1.stride, dilation=b1.first_dilation, skip="conv"
        )
        self.entry2 = XceptionUnit(
            128, (256,) * 3, stride=b2.stride, dilation=b2.first_dilation, skip="conv"
        )
        self.entry3 = XceptionUnit(
            256, (728,) * 3, stride=b3.stride, dilation=b3.first_dilation, skip="conv"
        )
        self.middle = nn.Sequential(
            *(
                XceptionUnit(728, (728,) * 3, stride=1, dilation=mid.dilation, skip="sum")
                for _ in range(_MIDDLE_UNITS)
            )
        )
        self.exit1 = XceptionUnit(
            728, (728, 1024, 1024), stride=x1.stride, dilation=x1.first_dilation, skip="conv"
        )
        self.exit2 = XceptionUnit(
            1024, (1536, 1536, 2048), stride=1, dilation=x2.dilation, skip="none", relu_first=False
        )
        self.output_stride = output_stride
        self.feature_info = FeatureInfo(low_channels=256, high_channels=2048, aux_channels=None)

    def forward(self, x: Tensor) -> Features:
        x = self.entry1(self.stem(x))
        x, low = self.entry2.forward_with_inner(x)
        x = self.exit2(self.exit1(self.middle(self.entry3(x))))
        return Features(low=low, high=x, aux=None)
