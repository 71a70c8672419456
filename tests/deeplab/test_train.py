"""Training loop and metrics: the schedule, the ignore label, and that loss goes down."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

import deeplab
from deeplab.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from deeplab.train import StepLog, TrainConfig, lr_factor, train


def test_confusion_matrix_matches_a_plain_count() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (37, 53)).astype(np.uint8)
    pred = rng.integers(0, 4, (37, 53)).astype(np.uint8)
    truth[:3] = 255  # ignored rows
    cm = confusion_matrix(truth, pred, 4)
    for t in range(4):
        for p in range(4):
            assert cm[t, p] == int(((truth == t) & (pred == p)).sum())
    assert cm.sum() == truth.size - 3 * 53


def test_confusion_matrix_counts_band_by_band_and_refuses_unknown_classes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted in bands of rows, as large images are, the counts are the same."""
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 6, (41, 29)).astype(np.uint8)
    pred = rng.integers(0, 6, (41, 29)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = 255
    whole = confusion_matrix(truth, pred, 6)
    monkeypatch.setattr("deeplab.metrics._EXACT_COUNTS", 100)  # bands of 3 rows
    assert np.array_equal(confusion_matrix(truth, pred, 6), whole)
    assert whole.dtype == np.int64 and whole.sum() == int((truth != 255).sum())
    with pytest.raises(ValueError, match="out of range for 5 classes"):
        confusion_matrix(truth, pred, 5)
    with pytest.raises(ValueError, match="must be uint8"):
        confusion_matrix(truth.astype(np.int64), pred, 6)


def test_iou_and_accuracy_on_a_known_case() -> None:
    truth = np.array([[0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1]], np.uint8)
    cm = confusion_matrix(truth, pred, 3)
    np.testing.assert_allclose(iou_per_class(cm)[:2], [1 / 2, 2 / 3])
    assert np.isnan(iou_per_class(cm)[2])  # absent from both: left out of the mean
    assert mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert pixel_accuracy(cm) == 0.75


def test_confusion_matrix_refuses_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8), 2)
    with pytest.raises(ValueError, match="out of range"):
        confusion_matrix(np.full((2, 2), 3, np.uint8), np.zeros((2, 2), np.uint8), 2)


def test_lr_warms_up_then_decays_to_zero() -> None:
    config = TrainConfig(steps=100, warmup_steps=10)
    factors = [lr_factor(s, config) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in pairwise(factors[10:]))
    assert lr_factor(100, config) == 0.0


def test_a_few_steps_fit_a_fixed_batch_and_respect_the_ignore_label() -> None:
    torch.manual_seed(0)
    model = deeplab.build("deeplabv3plus_mobilenet_v2", num_classes=3, aux=False)
    meta = deeplab.ModelMeta(arch="deeplabv3plus_mobilenet_v2", class_names=("a", "b", "c"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    labels = np.zeros((2, 48, 48), np.uint8)
    labels[:, :, 24:] = 1
    images[:, :, 24:] //= 4  # class 1 is the dark half
    labels[:, :8] = 255  # ignored; a label of 255 reaching the loss would raise
    config = TrainConfig(steps=30, warmup_steps=1, log_every=10, lr=3e-3)
    heard: list[StepLog] = []
    logs = train(
        model,
        meta,
        iter(lambda: (images, labels), None),
        config,
        device=torch.device("cpu"),
        on_step=heard.append,
    )
    assert [log.step for log in logs] == [10, 20, 30]
    assert [entry.step for entry in heard] == list(range(1, 31))  # every step, for progress
    assert [entry for entry in heard if entry.step % 10 == 0] == logs
    assert logs[-1].loss < logs[0].loss * 0.5
    model.eval()
    predictions = deeplab.Predictor(model, meta, device="cpu").predict(list(images))
    kept = labels[0] != 255
    assert (predictions[0].class_map[kept] == labels[0][kept]).mean() > 0.75  # chance: 0.5
