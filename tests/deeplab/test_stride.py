"""Trained weights run at another output stride: same weights, scaled ASPP rates, new version."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

import deeplab
from deeplab.bundled import DEMO_CHECKPOINT
from pipeline.config import RunConfig
from pipeline.labeling.models import load_predictor
from tests.helpers import randomize_batchnorm_


def _atrous_rates(model: nn.Module) -> list[int]:
    """Dilations of the ASPP's 3x3 branches, in order."""
    return [
        m.dilation[0]
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and "aspp" in name
        and m.kernel_size == (3, 3)
        and m.dilation[0] > 1
    ]


def test_torchvision_os8_weights_at_os16_equal_torchvision_built_at_os16(tmp_path: Path) -> None:
    """The independent reference: torchvision's own ResNet-50 dilated only in layer4 (OS16),
    with the ASPP rates halved from its OS8 12/24/36, loading the same state dict."""
    torch.manual_seed(0)
    trained = randomize_batchnorm_(
        deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5)
    ).eval()
    path = tmp_path / "tv.pth"
    torch.save(trained.state_dict(), path)
    ours, meta = deeplab.at_output_stride(*deeplab.load(path), 16)
    assert meta.options["output_stride"] == 16 and meta.options["aspp_rates"] == [6, 12, 18]

    body = resnet50(weights=None, replace_stride_with_dilation=[False, False, True])
    reference = DeepLabV3(
        IntermediateLayerGetter(body, return_layers={"layer4": "out"}),
        DeepLabHead(2048, 5, atrous_rates=(6, 12, 18)),
    )
    reference.load_state_dict(trained.state_dict(), strict=True)
    reference.eval()
    x = torch.rand(1, 3, 97, 129)
    with torch.no_grad():
        diff = (ours(x) - reference(x)["out"]).abs().max().item()
        apart = (ours(x) - trained(x)["out"]).abs().max().item()
    assert diff <= 1e-4
    assert apart > 1e-2  # and OS16 really computes something else than OS8


def test_demo_at_os8_keeps_its_weights_and_doubles_resolution_and_rates() -> None:
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    assert meta.options["output_stride"] == 16
    fine, fine_meta = deeplab.at_output_stride(model, meta, 8)
    assert fine is not model
    for (key, a), (_, b) in zip(model.state_dict().items(), fine.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    assert len(_atrous_rates(model)) == 3
    assert _atrous_rates(fine) == [2 * r for r in _atrous_rates(model)]
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert fine.backbone(x).high.shape[-2:] == (12, 16)
        assert model.backbone(x).high.shape[-2:] == (6, 8)
        assert fine(x).shape == model(x).shape == (1, len(meta.class_names), 96, 128)
    assert fine_meta.model_version != meta.model_version
    assert fine_meta.class_names == meta.class_names
    same, same_meta = deeplab.at_output_stride(model, meta, 16)
    assert same is model and same_meta == meta


def test_unknown_stride_is_refused() -> None:
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    with pytest.raises(ValueError, match="output_stride must be one of"):
        deeplab.at_output_stride(model, meta, 4)


def test_run_config_stride_reaches_the_predictor() -> None:
    config = RunConfig(source="in", out="out", device="cpu", output_stride=8)
    predictor = load_predictor(config)
    assert predictor.meta.options["output_stride"] == 8
    default = load_predictor(config.model_copy(update={"output_stride": None}))
    assert default.meta.options["output_stride"] == 16
    assert predictor.meta.model_version != default.meta.model_version
