"""Architecture tests: every registered variant, strides, ASPP rates, compute, bad options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deeplab
from deeplab.builders import BACKBONES
from deeplab.builders_smp import SMP_BACKBONES
from deeplab.flops import count_gmacs
from deeplab.registry import register

ALL_MODELS = deeplab.list_models()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def test_registry_lists_every_head_on_every_backbone() -> None:
    heads = ("deeplabv3", "deeplabv3plus")
    expected = {f"{head}_{bb}" for head in heads for bb in BACKBONES}
    expected |= {f"smp_{head}_{bb}" for head in heads for bb in SMP_BACKBONES}  # smp's layout
    assert set(ALL_MODELS) == expected
    assert len(ALL_MODELS) == 16


def test_registry_refuses_a_taken_name_and_lists_names_for_an_unknown_one() -> None:
    with pytest.raises(ValueError, match="already taken"):
        register("deeplabv3plus_resnet50")(lambda: nn.Identity())
    with pytest.raises(ValueError, match="registered: deeplabv3_mobilenet_v2"):
        deeplab.build("deeplabv4_resnet50", num_classes=3)


def test_builders_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        deeplab.build("deeplabv3_resnet50", 3)  # type: ignore[misc]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_gives_logits_at_the_input_size(name: str, device: str) -> None:
    model = deeplab.build(name, num_classes=4).eval().to(device)
    x = torch.rand(2, 3, 33, 47, device=device)  # not a multiple of any stride
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 4, 33, 47)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize(
    "name",
    [f"deeplabv3plus_{bb}" for bb in sorted(BACKBONES)]
    + [f"smp_deeplabv3plus_{bb}" for bb in sorted(SMP_BACKBONES)],
)
def test_feature_maps_have_the_declared_channels_and_strides(name: str, output_stride: int) -> None:
    model = deeplab.build(name, num_classes=3, output_stride=output_stride)
    with torch.no_grad():
        features = model.backbone.eval()(torch.rand(1, 3, 64, 96))
    info = model.backbone.feature_info
    assert features.low.shape[1:] == (info.low_channels, 64 // 4, 96 // 4)
    assert features.high.shape[1:] == (info.high_channels, 64 // output_stride, 96 // output_stride)
    if info.aux_channels is None:
        assert features.aux is None
    else:
        assert features.aux is not None and features.aux.shape[1] == info.aux_channels


@pytest.mark.parametrize(
    ("output_stride", "rates"),
    [
        (8, (12, 24, 36)),  # doubled at OS8
        (16, (6, 12, 18)),  # the paper's
        (32, (3, 6, 9)),  # halved: same field of view in input pixels
    ],
)
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_aspp_rates_follow_the_output_stride(
    backbone: str, output_stride: int, rates: tuple[int, int, int]
) -> None:
    model = deeplab.build(f"deeplabv3_{backbone}", num_classes=3, output_stride=output_stride)
    atrous = [branch[0] for branch in model.head.aspp.convs[1:4]]
    assert tuple(conv.dilation[0] for conv in atrous) == rates
    backbone_dilations = {
        m.dilation[0] for m in model.backbone.modules() if isinstance(m, nn.Conv2d)
    }
    assert max(backbone_dilations) == (32 // output_stride if output_stride < 32 else 1)


def test_separable_option_makes_aspp_and_decoder_depthwise() -> None:
    model = deeplab.build("deeplabv3plus_resnet50", num_classes=3, separable=True)
    depthwise = [branch[0] for branch in model.head.aspp.convs[1:4]]
    depthwise += [block[0] for block in model.head.fuse]
    assert all(conv.groups == conv.in_channels > 1 for conv in depthwise)
    plain = deeplab.build("deeplabv3plus_resnet50", num_classes=3)
    assert all(branch[0].groups == 1 for branch in plain.head.aspp.convs[1:4])


@pytest.mark.parametrize("decoder_convs", [1, 2, 3])
def test_decoder_projects_low_level_to_48_channels(decoder_convs: int) -> None:
    model = deeplab.build("deeplabv3plus_mobilenet_v2", num_classes=3, decoder_convs=decoder_convs)
    assert model.head.low_level[0].out_channels == 48
    assert len(model.head.fuse) == decoder_convs
    assert model.head.fuse[0][0].in_channels == 48 + 256


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("deeplabv3plus_resnet50", {"output_stride": 4}, "output_stride must be one of"),
        ("deeplabv3plus_resnet50", {"num_classes": 0}, "num_classes must be in 1..255"),
        ("deeplabv3plus_resnet50", {"num_classes": 256}, "num_classes must be in 1..255"),
        ("deeplabv3_mobilenet_v2", {"aux": True}, "no auxiliary stage"),
        ("deeplabv3_xception65", {"aux": True}, "no auxiliary stage"),
        ("deeplabv3_resnet50", {"aspp_rates": (6, 12)}, "three positive integers"),
        ("deeplabv3_resnet50", {"aspp_dropout": 1.0}, "aspp_dropout must be in"),
        ("deeplabv3plus_resnet50", {"decoder_convs": 0}, "decoder_convs must be at least 1"),
    ],
)
def test_unsupported_combinations_raise_clear_errors(
    name: str, options: dict[str, object], message: str
) -> None:
    kwargs: dict[str, object] = {"num_classes": 3, **options}
    with pytest.raises(ValueError, match=message):
        deeplab.build(name, **kwargs)


def test_resnet50_os8_with_aux_counts_torchvision_published_ops() -> None:
    # torchvision publishes _ops = 178.722 GFLOPS (i.e. GMACs) for deeplabv3_resnet50 at 520x520.
    with torch.device("meta"):
        model = deeplab.build(
            "deeplabv3_resnet50", num_classes=21, output_stride=8, aux=True, aspp_rates=(12, 24, 36)
        )
    assert count_gmacs(model.eval(), 520, 520, with_aux=True) == pytest.approx(178.722, abs=5e-4)


def test_xception65_plus_separable_os16_matches_the_paper_within_3_percent() -> None:
    # DeepLabV3+ paper, Table 5: Xception-65, OS16, decoder, separable ASPP and decoder, 513x513:
    # 54.17B multiply-adds.
    with torch.device("meta"):
        model = deeplab.build("deeplabv3plus_xception65", num_classes=21, separable=True)
    assert count_gmacs(model.eval(), 513, 513) == pytest.approx(54.17, rel=0.03)
