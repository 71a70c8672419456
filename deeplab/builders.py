"""The registered DeepLabV3 / V3+ variants: every head on every backbone.

Defaults are the papers': ASPP rates (6, 12, 18) at OS16 (doubled at OS8), ASPP dropout 0.1 as in
DeepLab's reference, two 3x3 decoder convs. Checkpoints from other families pass their own values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from deeplab.aspp import paper_rates
from deeplab.backbones.mobilenet_v2 import MobileNetV2Backbone
from deeplab.backbones.mobilenet_v3 import MobileNetV3LargeBackbone
from deeplab.backbones.resnet import ResNetBackbone
from deeplab.backbones.xception import Xception65Backbone
from deeplab.features import Backbone, check_output_stride
from deeplab.heads import DeepLabV3Head, DeepLabV3PlusHead, FCNHead
from deeplab.metrics import IGNORE_INDEX
from deeplab.model import DeepLab
from deeplab.registry import register

BACKBONES: dict[str, Callable[[int], Backbone]] = {
    "resnet50": partial(ResNetBackbone, 50),
    "resnet101": partial(ResNetBackbone, 101),
    "mobilenet_v3_large": MobileNetV3LargeBackbone,
    "mobilenet_v2": MobileNetV2Backbone,
    "xception65": Xception65Backbone,
}
MAX_CLASSES = IGNORE_INDEX  # class maps are uint8, and the last value means "ignore"


def _backbone(name: str, num_classes: int, output_stride: int) -> Backbone:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    check_output_stride(output_stride)
    return BACKBONES[name](output_stride)


def _aux_head(backbone: Backbone, name: str, num_classes: int, aux: bool) -> FCNHead | None:
    if not aux:
        return None
    channels = backbone.feature_info.aux_channels
    if channels is None:
        raise ValueError(f"backbone {name!r} has no auxiliary stage; use aux=False")
    return FCNHead(channels, num_classes)


def deeplabv3(
    backbone: str,
    *,
    num_classes: int,
    output_stride: int = 16,
    separable: bool = False,
    aspp_rates: Sequence[int] | None = None,
    aspp_dropout: float = 0.1,
    aux: bool = False,
) -> DeepLab:
    body = _backbone(backbone, num_classes, output_stride)
    head = DeepLabV3Head(
        body.feature_info,
        num_classes,
        rates=aspp_rates or paper_rates(output_stride),
        dropout=aspp_dropout,
        separable=separable,
    )
    return DeepLab(body, head, _aux_head(body, backbone, num_classes, aux))


def deeplabv3plus(
    backbone: str,
    *,
    num_classes: int,
    output_stride: int = 16,
    separable: bool = False,
    aspp_rates: Sequence[int] | None = None,
    aspp_dropout: float = 0.1,
    decoder_convs: int = 2,
    aux: bool = False,
) -> DeepLab:
    body = _backbone(backbone, num_classes, output_stride)
    head = DeepLabV3PlusHead(
        body.feature_info,
        num_classes,
        rates=aspp_rates or paper_rates(output_stride),
        dropout=aspp_dropout,
        separable=separable,
        decoder_convs=decoder_convs,
    )
    return DeepLab(body, head, _aux_head(body, backbone, num_classes, aux))


for _name in BACKBONES:
    register(f"deeplabv3_{_name}")(partial(deeplabv3, _name))
    register(f"deeplabv3plus_{_name}")(partial(deeplabv3plus, _name))
