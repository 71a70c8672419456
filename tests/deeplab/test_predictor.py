"""Predictor: batched, mixed-size inference equals the model run one image at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import deeplab
from deeplab.preprocess import Normalizer
from tests.helpers import randomize_batchnorm_

SIZES = [(97, 131), (64, 64), (97, 131), (50, 75), (64, 64)]


@pytest.fixture(scope="module")
def model_and_meta() -> tuple[deeplab.DeepLab, deeplab.ModelMeta]:
    torch.manual_seed(0)
    model = deeplab.build("deeplabv3plus_mobilenet_v2", num_classes=6)
    randomize_batchnorm_(model, seed=3)
    meta = deeplab.ModelMeta(
        arch="deeplabv3plus_mobilenet_v2", class_names=tuple("abcdef"), mean=(0.4, 0.5, 0.6)
    )
    return model.eval(), meta


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for h, w in SIZES:
        # smooth images (a random low-res field, upsampled) so the predictions form regions
        coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
        t = torch.from_numpy(coarse).permute(2, 0, 1)[None]
        up = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear")
        out.append(up[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    return out


def _reference_logits(
    model: deeplab.DeepLab, meta: deeplab.ModelMeta, image: np.ndarray
) -> torch.Tensor:
    """The model alone, one image, plain fp32 NCHW contiguous: no batching, no channels_last."""
    x = Normalizer(meta, torch.device("cpu"))(torch.from_numpy(image)[None], channels_last=False)
    with torch.no_grad():
        return model(x)[0]


def test_mixed_size_batch_equals_one_image_at_a_time(
    model_and_meta: tuple[deeplab.DeepLab, deeplab.ModelMeta],
) -> None:
    model, meta = model_and_meta
    images = _images()
    predictions = deeplab.Predictor(model, meta, device="cpu").predict(images)
    assert len(predictions) == len(images)
    classes_seen: set[int] = set()
    for image, pred in zip(images, predictions, strict=True):
        logits = _reference_logits(model, meta, image)
        assert pred.class_map.shape == image.shape[:2] and pred.class_map.dtype == np.uint8
        expected = logits.argmax(0).numpy()
        differ = pred.class_map != expected
        top2 = logits.topk(2, dim=0).values
        gap = (top2[0] - top2[1]).numpy()
        assert (gap[differ] < 1e-3).all(), "class maps differ away from ties"
        assert differ.mean() < 1e-3
        classes_seen |= set(np.unique(pred.class_map).tolist())
    assert len(classes_seen) >= 2  # the test model does not predict one class everywhere


def test_confidence_is_the_max_softmax_in_0_255(
    model_and_meta: tuple[deeplab.DeepLab, deeplab.ModelMeta],
) -> None:
    model, meta = model_and_meta
    image = _images(seed=1)[0]
    pred = deeplab.Predictor(model, meta, device="cpu", low_confidence=0.6).predict([image])[0]
    probs = torch.softmax(_reference_logits(model, meta, image), dim=0).max(0).values.numpy()
    assert pred.confidence.dtype == np.uint8
    assert np.abs(pred.confidence.astype(int) - np.round(probs * 255)).max() <= 1
    assert pred.mean_confidence == pytest.approx(float(probs.mean()), abs=1e-4)
    assert pred.low_confidence_share == pytest.approx(float((probs < 0.6).mean()), abs=1e-3)
    assert 1 / 6 <= pred.mean_confidence <= 1


def test_output_size_upsamples_logits_to_the_original_size(
    model_and_meta: tuple[deeplab.DeepLab, deeplab.ModelMeta],
) -> None:
    model, meta = model_and_meta
    small = _images()[0]
    pred = deeplab.Predictor(model, meta, device="cpu").predict([small], [(194, 262)])[0]
    assert pred.class_map.shape == pred.confidence.shape == (194, 262)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8), np.uint8),  # grey, no channel axis
        np.zeros((8, 8, 4), np.uint8),  # RGBA
        np.zeros((8, 8, 3), np.float32),  # not uint8
    ],
)
def test_images_that_are_not_rgb_uint8_are_refused(
    model_and_meta: tuple[deeplab.DeepLab, deeplab.ModelMeta], bad: np.ndarray
) -> None:
    model, meta = model_and_meta
    with pytest.raises(ValueError, match="expected HxWx3 uint8"):
        deeplab.Predictor(model, meta, device="cpu").predict([bad])


def test_asking_for_cuda_without_it_is_an_error(
    model_and_meta: tuple[deeplab.DeepLab, deeplab.ModelMeta],
) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    model, meta = model_and_meta
    with pytest.raises(ValueError, match="CUDA is not available"):
        deeplab.Predictor(model, meta, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_cuda_class_maps_agree_with_cpu(
    model_and_meta: tuple[deeplab.DeepLab, deeplab.ModelMeta], precision: str
) -> None:
    model, meta = model_and_meta
    images = _images()
    cpu = deeplab.Predictor(model, meta, device="cpu").predict(images)
    gpu = deeplab.Predictor(
        model,
        meta,
        device="cuda",
        precision=precision,  # type: ignore[arg-type]
    ).predict(images)
    model.to("cpu")
    for a, b in zip(cpu, gpu, strict=True):
        assert (a.class_map == b.class_map).mean() > 0.99


@pytest.mark.slow
def test_compiled_and_frozen_on_cpu_predicts_what_eager_does(
    model_and_meta: tuple[deeplab.DeepLab, deeplab.ModelMeta],
) -> None:
    """``compile`` on a CPU freezes the weights (BatchNorm folded into convs): the same
    class maps as eager, up to a rare flip where two classes tie within float error."""
    model, meta = model_and_meta
    images = [image for image in _images(seed=4) if image.shape[:2] == (97, 131)]
    eager = deeplab.Predictor(model, meta, device="cpu").predict(images)
    compiled = deeplab.Predictor(model, meta, device="cpu", compile=True).predict(images)
    for a, b in zip(eager, compiled, strict=True):
        assert np.mean(a.class_map == b.class_map) > 0.999
        assert np.abs(a.confidence.astype(int) - b.confidence.astype(int)).max() <= 1
