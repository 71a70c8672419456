"""What a backbone hands to the heads, and what it promises about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

OUTPUT_STRIDES = (8, 16, 32)


class Features(NamedTuple):
    """Backbone outputs: ``low`` at stride 4 (V3+ decoder), ``high`` at the output stride (ASPP),
    ``aux`` where a backbone has a stage for an auxiliary FCN head (torchvision's layout)."""

    low: Tensor
    high: Tensor
    aux: Tensor | None


@dataclass(frozen=True, slots=True)
class FeatureInfo:
    """Channel counts of :class:`Features`; heads are sized from it, tests check it."""

    low_channels: int
    high_channels: int
    aux_channels: int | None


class Backbone(nn.Module):
    """Base of every backbone: a feature extractor whose ``high`` map has ``output_stride``."""

    feature_info: FeatureInfo
    output_stride: int

    def forward(self, x: Tensor) -> Features:
        raise NotImplementedError


def check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")


@dataclass(frozen=True, slots=True)
class StageAtrous:
    """How one stage runs at a given output stride: its stride, the dilation of its first unit,
    and the dilation of the units after it."""

    stride: int
    first_dilation: int
    dilation: int


def atrous_schedule(strides: list[int], output_stride: int) -> list[StageAtrous]:
    """Per stage, replace stride by dilation (atrous convolution) once the running stride has
    reached ``output_stride``, so resolution stops dropping there.

    The unit where the switch happens keeps the previous dilation and the units after it use the
    multiplied one, as torchvision's ``replace_stride_with_dilation`` and DeepLab's
    ``stack_blocks_dense`` do.
    """
    check_output_stride(output_stride)
    current, dilation = 1, 1
    out: list[StageAtrous] = []
    for stride in strides:
        if current * stride > output_stride:
            out.append(StageAtrous(1, dilation, dilation * stride))
            dilation *= stride
        else:
            current *= stride
            out.append(StageAtrous(stride, dilation, dilation))
    return out


def dilate_every_conv(module: nn.Module, dilation: int) -> None:
    """Set every conv in ``module`` to stride 1 and ``dilation``, padded to keep the size.

    The other way to trade stride for dilation than :func:`atrous_schedule`'s: the stage's first
    unit is dilated too. segmentation_models_pytorch's encoders are dilated this way (its
    ``make_dilated``), so its weights give its outputs only with this.
    """
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            kh, kw = conv.kernel_size
            conv.stride = (1, 1)
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation * (kh // 2), dilation * (kw // 2))
