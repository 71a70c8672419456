"""Builders for segmentation_models_pytorch's DeepLabV3 / V3+ layout (``smp_deeplabv3[plus]_*``).

They exist so smp checkpoints give smp's outputs (see :mod:`deeplab.heads_smp` and the smp
backbone variants); defaults are smp's, except output stride: 16 for both, as every builder
here (smp's DeepLabV3 uses 8, which the checkpoint loader passes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from deeplab.backbones.mobilenet_v2_smp import SmpMobileNetV2Backbone
from deeplab.backbones.resnet import ResNetBackbone
from deeplab.builders import MAX_CLASSES
from deeplab.features import Backbone, check_output_stride
from deeplab.heads_smp import SmpDeepLabV3Head, SmpDeepLabV3PlusHead
from deeplab.model import DeepLab
from deeplab.registry import register

SMP_BACKBONES: dict[str, Callable[[int], Backbone]] = {
    "resnet50": partial(ResNetBackbone, 50, dilate_whole_stage=True),
    "resnet101": partial(ResNetBackbone, 101, dilate_whole_stage=True),
    "mobilenet_v2": SmpMobileNetV2Backbone,
}
SMP_ASPP_RATES = (12, 24, 36)  # smp's default at every output stride
SMP_ASPP_DROPOUT = 0.5


def _backbone(name: str, num_classes: int, output_stride: int) -> Backbone:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    check_output_stride(output_stride)
    return SMP_BACKBONES[name](output_stride)


def smp_deeplabv3(
    backbone: str,
    *,
    num_classes: int,
    output_stride: int = 16,
    separable: bool = False,
    aspp_rates: Sequence[int] = SMP_ASPP_RATES,
    aspp_dropout: float = SMP_ASPP_DROPOUT,
) -> DeepLab:
    """``separable`` is smp's ``decoder_aspp_separable`` (ASPP branches only)."""
    body = _backbone(backbone, num_classes, output_stride)
    head = SmpDeepLabV3Head(
        body.feature_info, num_classes, rates=aspp_rates, dropout=aspp_dropout, separable=separable
    )
    return DeepLab(body, head)


def smp_deeplabv3plus(
    backbone: str,
    *,
    num_classes: int,
    output_stride: int = 16,
    separable: bool = True,
    aspp_rates: Sequence[int] = SMP_ASPP_RATES,
    aspp_dropout: float = SMP_ASPP_DROPOUT,
) -> DeepLab:
    """``separable`` is smp's ``decoder_aspp_separable`` (the decoder blocks always are)."""
    body = _backbone(backbone, num_classes, output_stride)
    head = SmpDeepLabV3PlusHead(
        body.feature_info, num_classes, rates=aspp_rates, dropout=aspp_dropout, separable=separable
    )
    return DeepLab(body, head)


for _name in SMP_BACKBONES:
    register(f"smp_deeplabv3_{_name}")(partial(smp_deeplabv3, _name))
    register(f"smp_deeplabv3plus_{_name}")(partial(smp_deeplabv3plus, _name))
