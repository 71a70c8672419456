"""segmentation_models_pytorch (smp) checkpoints: smp's own outputs, round trips, refusals.

Every model is smp's own, built offline (``encoder_weights=None``) with random BatchNorm
statistics, saved the way smp users save it (``torch.save(model.state_dict())``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

import deeplab
from deeplab.preprocess import Normalizer
from tests.helpers import randomize_batchnorm_

pytestmark = pytest.mark.slow  # 20-odd ResNet/MobileNet models: over a minute on 2 cores

smp = pytest.importorskip(
    "segmentation_models_pytorch",
    reason="segmentation-models-pytorch (the test extra) is needed for smp's reference outputs",
)

ARCHS = {"deeplabv3": "DeepLabV3", "deeplabv3plus": "DeepLabV3Plus"}
ENCODERS = ["resnet50", "resnet101", "mobilenet_v2"]
SHAPES = [(1, 3, 64, 64), (1, 3, 96, 64)]  # square, and non-square: smp needs multiples of 16
DEFAULT_STRIDE = {"deeplabv3": 8, "deeplabv3plus": 16}  # smp's


def _smp(arch: str, encoder: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(smp, ARCHS[arch])(
        encoder_name=encoder, encoder_weights=None, classes=5, **kwargs
    )
    return randomize_batchnorm_(model).eval()


def _saved(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


Forward = Callable[[torch.Tensor], torch.Tensor]


def _max_diff(ours: Forward, theirs: Forward) -> float:
    worst = 0.0
    torch.manual_seed(1)
    for shape in SHAPES:
        x = torch.rand(*shape)
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        assert a.shape == b.shape == (shape[0], 5, *shape[2:])
        worst = max(worst, (a - b).abs().max().item())
    return worst


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_smp_state_dicts_give_smp_outputs_and_survive_our_format(
    arch: str, encoder: str, tmp_path: Path
) -> None:
    theirs = _smp(arch, encoder)
    model, meta = deeplab.load(_saved(theirs, tmp_path / "smp.pth"))
    assert (meta.arch, meta.source) == (f"smp_{arch}_{encoder}", "smp")
    assert meta.options["output_stride"] == DEFAULT_STRIDE[arch]
    assert meta.options["separable"] == (arch == "deeplabv3plus")  # smp's defaults
    assert model.align_corners
    diff = _max_diff(model, theirs)
    assert diff <= 1e-4, f"max |diff| {diff}"
    if encoder == "resnet101":
        return  # the round trip below is resnet50's, with 170 MB more to write and hash

    ours = tmp_path / "ours.safetensors"
    saved = deeplab.save(model, meta, ours)
    again, again_meta = deeplab.load(ours)
    assert again_meta == saved
    assert (again_meta.arch, again_meta.source) == (meta.arch, "smp")
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("encoder", ["resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_a_non_default_output_stride_and_aspp_layout(
    arch: str, encoder: str, tmp_path: Path
) -> None:
    stride = 16 if arch == "deeplabv3" else 8
    separable = arch == "deeplabv3"  # the other way round from smp's defaults
    theirs = _smp(arch, encoder, encoder_output_stride=stride, decoder_aspp_separable=separable)
    path = _saved(theirs, tmp_path / "smp.pth")
    model, meta = deeplab.load(path, output_stride=stride)
    assert meta.options["output_stride"] == stride
    assert meta.options["separable"] == separable
    diff = _max_diff(model, theirs)
    assert diff <= 1e-4, f"max |diff| {diff}"
    if encoder == "mobilenet_v2":
        wrong, _ = deeplab.load(path)  # smp does not record the stride: its default is assumed
        assert _max_diff(wrong, theirs) > 1e-3


def test_at_output_stride_keeps_smps_rates_field_of_view(tmp_path: Path) -> None:
    theirs = _smp("deeplabv3plus", "mobilenet_v2")  # OS16, rates (12, 24, 36)
    model, meta = deeplab.at_output_stride(*deeplab.load(_saved(theirs, tmp_path / "s.pth")), 8)
    assert meta.options["aspp_rates"] == [24, 48, 72]
    finer = _smp(
        "deeplabv3plus", "mobilenet_v2", encoder_output_stride=8, decoder_atrous_rates=(24, 48, 72)
    )
    finer.load_state_dict(theirs.state_dict())
    assert _max_diff(model, finer.eval()) <= 1e-4


def test_smp_files_saved_as_safetensors_load_too(tmp_path: Path) -> None:
    theirs = _smp("deeplabv3plus", "mobilenet_v2")
    path = tmp_path / "smp.safetensors"
    safetensors.torch.save_file(theirs.state_dict(), path)
    model, meta = deeplab.load(path, classes=["a", "b", "c", "d", "e"])
    assert meta.source == "smp"
    assert meta.class_names == ("a", "b", "c", "d", "e")
    assert _max_diff(model, theirs) <= 1e-4


def test_old_smp_deeplabv3_decoder_keys_load(tmp_path: Path) -> None:
    # Before smp 0.4 the DeepLabV3 decoder was a Sequential: decoder.0 (ASPP), .1 conv, .2 BN.
    theirs = _smp("deeplabv3", "mobilenet_v2")
    old = {"aspp": "0", "conv": "1", "bn": "2"}
    state = {}
    for key, value in theirs.state_dict().items():
        parts = key.split(".")
        if parts[0] == "decoder":
            parts[1] = old[parts[1]]
        state[".".join(parts)] = value
    torch.save(state, tmp_path / "old.pth")
    model, meta = deeplab.load(tmp_path / "old.pth")
    assert meta.arch == "smp_deeplabv3_mobilenet_v2"
    assert _max_diff(model, theirs) <= 1e-4


def test_the_classification_head_is_dropped_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    theirs = _smp("deeplabv3plus", "mobilenet_v2", aux_params={"classes": 2})
    with caplog.at_level(logging.INFO, logger="deeplab.convert_smp"):
        model, _ = deeplab.load(_saved(theirs, tmp_path / "smp.pth"))
    assert "dropped smp's classification_head" in caplog.text
    assert not any(key.startswith("classification") for key in model.state_dict())
    assert _max_diff(model, lambda x: theirs(x)[0]) <= 1e-4  # (masks, labels) with aux_params


def test_the_predictor_upsamples_as_smp_does(tmp_path: Path) -> None:
    theirs = _smp("deeplabv3", "mobilenet_v2")  # OS8: upsampled x8, where align_corners tells
    model, meta = deeplab.load(_saved(theirs, tmp_path / "smp.pth"))
    image = np.random.default_rng(0).integers(0, 256, (96, 64, 3), dtype=np.uint8)
    x = Normalizer(meta, torch.device("cpu"))(torch.from_numpy(image[None]), channels_last=False)
    with torch.no_grad():
        expected = theirs(x)[0].argmax(dim=0).numpy()
    predictor = deeplab.Predictor(model, meta, device="cpu", precision="float32")
    (prediction,) = predictor.predict([image])
    assert (prediction.class_map != expected).mean() < 1e-3  # near-ties may fall either way


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        (
            "deeplabv3plus",
            {"encoder_name": "resnet34"},
            r"whose encoder is resnet34; supported encoders: resnet50, resnet101, mobilenet_v2; "
            r"encoder keys start \[encoder\.bn1, encoder\.conv1, encoder\.layer1",
        ),
        ("deeplabv3", {"encoder_name": "resnext50_32x4d"}, "whose encoder is a ResNeXt"),
        (
            "deeplabv3plus",
            {"encoder_name": "efficientnet-b0"},
            r"whose encoder is one this library does not recognise; supported encoders: "
            r"resnet50, .*encoder keys start \[encoder\._blocks, encoder\._bn0",
        ),
        ("deeplabv3", {"encoder_depth": 4}, "ASPP reads 1024 channels.*encoder_depth 5"),
        ("deeplabv3plus", {"decoder_channels": 128}, "decoder_channels=128"),
        ("deeplabv3", {"in_channels": 4}, "in_channels=4"),
    ],
)
def test_what_does_not_load_is_refused_naming_what_differs(
    arch: str, kwargs: dict[str, Any], message: str, tmp_path: Path
) -> None:
    kwargs = {"encoder_name": "resnet50", **kwargs}
    theirs = getattr(smp, ARCHS[arch])(encoder_weights=None, classes=3, **kwargs)
    path = _saved(theirs, tmp_path / "smp.pth")
    with pytest.raises(deeplab.CheckpointError, match=message) as err:
        deeplab.load(path)
    text = str(err.value)
    assert str(path) in text
    assert f"an smp {ARCHS[arch]}" in text
    assert "\n" not in text


def test_an_smp_model_other_than_deeplab_is_refused(tmp_path: Path) -> None:
    theirs = smp.Unet(encoder_name="resnet34", encoder_weights=None, classes=3)
    path = _saved(theirs, tmp_path / "unet.pth")
    with pytest.raises(deeplab.CheckpointError, match="not DeepLabV3 or DeepLabV3Plus"):
        deeplab.load(path)
