"""ResNet-50/101 (torchvision's), strides of the last stages replaced by dilation."""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from torchvision.models import resnet50, resnet101

from deeplab.features import Backbone, FeatureInfo, Features, atrous_schedule, dilate_every_conv

_BUILDERS = {50: resnet50, 101: resnet101}
# Strides of conv1, maxpool, layer1..layer4; only layer2..layer4 may turn into dilation.
_STRIDES = [2, 2, 1, 2, 2, 2]


class ResNetBackbone(Backbone):
    """Low-level features from ``layer1`` (stride 4), auxiliary from ``layer3``, high from
    ``layer4``. Parameter names are torchvision's, so its state dicts load by prefix.

    ``dilate_whole_stage`` dilates the first block of a dilated stage too, as
    segmentation_models_pytorch does; torchvision and the DeepLab papers keep that block at the
    previous dilation. Same weights, different outputs: it is a property of the checkpoint.
    """

    def __init__(
        self, depth: Literal[50, 101], output_stride: int, *, dilate_whole_stage: bool = False
    ) -> None:
        super().__init__()
        schedule = atrous_schedule(_STRIDES, output_stride)
        dilate = [stage.stride == 1 for stage in schedule[3:]]
        if dilate_whole_stage:
            net = _BUILDERS[depth](weights=None)
        else:
            net = _BUILDERS[depth](weights=None, replace_stride_with_dilation=dilate)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        if dilate_whole_stage:
            stages = [self.layer2, self.layer3, self.layer4]
            for layer, stage, dilated in zip(stages, schedule[3:], dilate, strict=True):
                if dilated:
                    dilate_every_conv(layer, stage.dilation)
        self.output_stride = output_stride
        self.feature_info = FeatureInfo(low_channels=256, high_channels=2048, aux_channels=1024)

    def forward(self, x: Tensor) -> Features:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        aux = self.layer3(self.layer2(low))
        return Features(low=low, high=self.layer4(aux), aux=aux)
