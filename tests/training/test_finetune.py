"""Fine-tuning on reviewed labels: the demo model learns a class layout it gets wrong, the
checkpoint says what it was trained on, and it labels and evaluates like any other model."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from rich.console import Console
from typer.testing import CliRunner

import deeplab
import deeplab.scenes
import pipeline.training.finetune
from deeplab.bundled import DEMO_CHECKPOINT
from deeplab.classes import with_classes
from deeplab.predictor import Predictor
from deeplab.scenes import DEMO_CLASSES, Scene
from deeplab.train import StepLog
from pipeline.config import RunConfig
from pipeline.formats import open_run
from pipeline.labeling.annotate import annotate
from pipeline.quality.evaluate import evaluate_runs
from pipeline.quality.truth import open_truth
from pipeline.training.finetune import (
    FinetuneConfig,
    FinetuneResult,
    Plan,
    Sample,
    class_keep,
    class_names_for,
    crops,
    default_steps,
    finetune,
    split,
)

N = len(DEMO_CLASSES)
# The new layout: class k is drawn in the material (hue band and texture) of class MATERIAL[k],
# so a disc looks like the demo model's box, and the demo model calls it one.
MATERIAL = {1: 2, 2: 3, 3: 4, 4: 1}
STEPS, BATCH, CROP, LR = 150, 4, 96, 2e-3


def new_layout(seed: int, count: int, size: int) -> list[Scene]:
    hues = {k: deeplab.scenes.HUES[v] for k, v in MATERIAL.items()}
    textures = {k: deeplab.scenes.TEXTURES[v] for k, v in MATERIAL.items()}
    with (
        mock.patch.dict(deeplab.scenes.HUES, hues),
        mock.patch.dict(deeplab.scenes.TEXTURES, textures),
    ):
        return list(deeplab.scenes.scenes(seed, count, height=size, width=size))


def write_set(folder: Path, scenes: list[Scene]) -> tuple[Path, Path]:
    """images/<n>.png and a masks folder paired by name, with a labelmap.txt."""
    images, masks = folder / "images", folder / "masks"
    (masks / "SegmentationClass").mkdir(parents=True)
    images.mkdir()
    for n, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(images / f"{n:02d}.png")
        Image.fromarray(scene.mask).save(masks / "SegmentationClass" / f"{n:02d}.png")
    (masks / "labelmap.txt").write_text(
        "".join(f"{name}:0,0,{i}::\n" for i, name in enumerate(DEMO_CLASSES))
    )
    return images, masks


def miou(checkpoint: Path, scenes: list[Scene]) -> float:
    """The reference: the model's argmax against the scenes' masks, a bincount confusion."""
    model, meta = deeplab.load(checkpoint)
    predictor = Predictor(model, meta, device="cpu")
    counts = np.zeros(N * N, np.int64)
    for scene in scenes:
        predicted = predictor.predict([scene.image])[0].class_map
        counts += np.bincount(
            scene.mask.astype(np.int64).ravel() * N + predicted.ravel(), minlength=N * N
        )
    cm = counts.reshape(N, N)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


@dataclass(frozen=True)
class Trained:
    result: FinetuneResult
    checkpoint: Path
    images: Path
    masks: Path
    held_out: list[Scene]
    seconds: float


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    root = tmp_path_factory.mktemp("finetune")
    images, masks = write_set(root, new_layout(1, 20, 160))
    start = time.perf_counter()
    result = finetune(
        FinetuneConfig(
            images=str(images),
            masks=str(masks),
            init="demo",
            out=str(root / "tuned.safetensors"),
            steps=STEPS,
            batch_size=BATCH,
            crop=CROP,
            lr=LR,
            device="cpu",
        )
    )
    seconds = time.perf_counter() - start
    yield Trained(
        result, root / "tuned.safetensors", images, masks, new_layout(2, 12, 128), seconds
    )


@pytest.mark.slow
def test_fine_tuning_learns_a_layout_the_demo_model_gets_wrong(trained: Trained) -> None:
    before = miou(DEMO_CHECKPOINT, trained.held_out)
    after = miou(trained.checkpoint, trained.held_out)
    r = trained.result
    print(
        f"\nfine-tune {STEPS} steps x {BATCH} crops of {CROP} px, lr {LR}, on {r.train_images} "
        f"images ({r.val_images} validation), CPU {torch.get_num_threads()} threads: "
        f"{r.seconds:.1f} s training, {trained.seconds:.1f} s in all\n"
        f"validation mIoU {r.val_miou_before:.4f} -> {r.val_miou_after:.4f}; "
        f"held-out ({len(trained.held_out)} scenes of 128 px) mIoU {before:.4f} -> {after:.4f}"
    )
    assert before < 0.4  # the demo model does mistake the new layout
    assert after > before + 0.2
    assert r.val_miou_before is not None and r.val_miou_after is not None
    assert r.val_miou_after > r.val_miou_before + 0.1


@pytest.mark.slow
def test_the_checkpoint_records_its_data_and_training(trained: Trained) -> None:
    _, meta = deeplab.load(trained.checkpoint)
    assert (
        meta.class_names == DEMO_CLASSES and meta.model_version == trained.result.meta.model_version
    )
    provenance = meta.provenance
    lines = []
    for path in sorted(trained.images.iterdir()):
        mask = np.asarray(Image.open(trained.masks / "SegmentationClass" / path.name), np.uint8)
        image_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{path.name}\t{image_sha}\t{hashlib.sha256(mask.tobytes()).hexdigest()}\n")
    data = provenance["data"]
    assert isinstance(data, dict)
    assert data["sha256"] == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert (
        data["train_images"] == trained.result.train_images
        and data["val_images"] == trained.result.val_images >= 1
    )
    assert provenance["steps"] == STEPS
    assert provenance["val_miou_before"] == round(trained.result.val_miou_before or 0, 4)
    assert provenance["val_miou_after"] == round(trained.result.val_miou_after or 0, 4)
    demo = deeplab.load(DEMO_CHECKPOINT)[1]
    assert provenance["finetuned_from"] == {"ref": "demo", "model_version": demo.model_version}


@pytest.mark.slow
def test_the_checkpoint_labels_a_run_and_evaluates_beside_the_demo_model(
    trained: Trained, tmp_path: Path
) -> None:
    images, masks = write_set(tmp_path / "held", trained.held_out[:6])
    runs = {}
    for name, model in (("demo", "demo"), ("tuned", str(trained.checkpoint))):
        out = tmp_path / name
        summary = annotate(RunConfig(source=str(images), out=str(out), model=model, device="cpu"))
        assert not summary.failed
        runs[name] = open_run(str(out))
    demo, tuned = evaluate_runs([runs["demo"], runs["tuned"]], open_truth(str(masks)))
    print(f"\nevaluate: demo mIoU {demo.miou:.4f}, fine-tuned mIoU {tuned.miou:.4f}")
    assert tuned.miou is not None and demo.miou is not None and tuned.miou > demo.miou + 0.1
    markdown = (tmp_path / "tuned" / "evaluations" / f"{tuned.model_version}.md").read_text()
    file = trained.checkpoint.name
    assert f"| | {file} {tuned.model_version[:8]} | demo {demo.model_version[:8]} |" in markdown


def test_new_classes_get_a_new_classifier_that_keeps_the_known_rows() -> None:
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    names = ("background", "star", "box", "disc")
    torch.manual_seed(0)
    fresh, new_meta, note = with_classes(model, meta, names)
    assert new_meta.class_names == names and fresh.num_classes == 4
    assert "carried over by name" in note and "star" in note
    old, new = model.state_dict(), fresh.state_dict()
    for key in ("head.classifier.weight", "head.classifier.bias"):
        for row, name in enumerate(names):
            if name in meta.class_names:
                assert torch.equal(new[key][row], old[key][meta.class_names.index(name)])
            else:
                assert not torch.equal(new[key][row], old[key][0])
    assert all(torch.equal(new[k], old[k]) for k in old if not k.startswith("head.classifier"))
    same, same_meta, _ = with_classes(model, meta, meta.class_names)
    assert same is model and same_meta is meta


def test_class_names_come_from_the_labels_only_when_they_differ(tmp_path: Path) -> None:
    meta = deeplab.load(DEMO_CHECKPOINT)[1]
    coco = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "box"}]}
    (tmp_path / "known.json").write_text(json.dumps(coco))
    assert class_names_for(meta, open_truth(str(tmp_path / "known.json"))) == DEMO_CLASSES
    coco["categories"] += [{"id": 3, "name": "star"}]
    (tmp_path / "new.json").write_text(json.dumps(coco))
    names = class_names_for(meta, open_truth(str(tmp_path / "new.json")))
    assert names == ("background", "box", "star")


def _sample(key: str, mask: np.ndarray) -> Sample:
    image = np.stack([mask * 40] * 3, axis=-1).astype(np.uint8)
    return Sample(key=key, image=image, mask=mask, image_sha256="i", mask_sha256="m")


def test_the_split_keeps_each_image_on_its_side_as_the_set_grows() -> None:
    one = np.zeros((4, 4), np.uint8)
    small = [_sample(f"{i}.png", one) for i in range(60)]
    large = [*small, *(_sample(f"x{i}.png", one) for i in range(40))]
    val_small = {s.key for s in split(small, 0.25)[1]}
    val_large = {s.key for s in split(large, 0.25)[1]}
    assert val_large & {s.key for s in small} == val_small
    assert 5 < len(val_small) < 25
    train, val = split(small[:2], 0.01)
    assert len(train) == len(val) == 1
    assert split(small[:3], 0.0)[1] == []


def test_class_weights_keep_rare_classes() -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[:4, :4] = 1
    mask[10:30, 10:30] = 2
    mask[0, 39] = 255
    keep = class_keep([_sample("a", mask)], N)
    counts = np.array([(mask == c).sum() for c in range(N)], np.float64)
    weight = np.where(counts > 0, 1 / np.sqrt(np.maximum(counts, 1) / counts.sum()), 0)
    expected = np.maximum(weight / weight.max(), 0.1)
    present = counts > 0
    assert np.allclose(keep[:N][present], expected[present])
    assert keep[1] == 1.0 and keep[0] < keep[2] < keep[1]
    assert keep[255] == 1.0 and keep[3] == keep[4] == 1.0


def test_crops_are_windows_of_the_image_and_its_mask() -> None:
    rng = np.random.default_rng(0)
    mask = rng.integers(0, N, (24, 30), dtype=np.uint8)
    sample = _sample("a", mask)
    batches = crops([sample], batch_size=6, crop=16, scale=(1.0, 1.0), keep=None, rng=rng)
    images, masks = next(batches)
    assert images.shape == (6, 16, 16, 3) and masks.shape == (6, 16, 16)
    windows = {
        np.ascontiguousarray(m[y : y + 16, x : x + 16]).tobytes()
        for m in (mask, mask[:, ::-1])
        for y in range(24 - 15)
        for x in range(30 - 15)
    }
    for image, crop in zip(images, masks, strict=True):
        assert crop.tobytes() in windows
        assert np.array_equal(image[..., 0], crop * 40)  # image and mask cropped alike
    images, masks = next(
        crops([sample], batch_size=4, crop=64, scale=(1.0, 1.0), keep=None, rng=rng)
    )
    assert (masks == 255).sum(axis=(1, 2)).tolist() == [64 * 64 - 24 * 30] * 4  # padding ignored
    small, _ = next(crops([sample], batch_size=2, crop=16, scale=(0.5, 0.5), keep=None, rng=rng))
    assert small.shape == (2, 16, 16, 3)


def _coco_of(masks: Path, images: Path) -> Path:
    """The same labels as COCO: one RLE annotation per class and image."""
    coco: dict[str, list[dict[str, object]]] = {"images": [], "annotations": [], "categories": []}
    coco["categories"] = [{"id": c, "name": DEMO_CLASSES[c]} for c in range(1, N)]
    for n, path in enumerate(sorted(images.iterdir())):
        mask = np.asarray(Image.open(masks / "SegmentationClass" / path.name), np.uint8)
        coco["images"].append(
            {"id": n, "file_name": path.name, "height": mask.shape[0], "width": mask.shape[1]}
        )
        for c in range(1, N):
            rle = mask_utils.encode(np.asfortranarray((mask == c).astype(np.uint8)))
            segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": n,
                    "category_id": c,
                    "segmentation": segmentation,
                }
            )
    out = masks.parent / "labels.json"
    out.write_text(json.dumps(coco))
    return out


def test_cli_trains_from_coco_and_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    from flows.cli import app

    images, masks = write_set(tmp_path, new_layout(5, 4, 64))
    coco = _coco_of(masks, images)
    out = tmp_path / "cli.safetensors"
    args = ["train", "--images", str(images), "--coco", str(coco), "--out", str(out)]
    small = ["--steps", "2", "--batch-size", "2", "--crop", "32", "--device", "cpu"]
    result = CliRunner().invoke(
        app, [*args, *small, "--class-weights", "auto"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "step 2/2" in result.stderr and "validation mIoU" in result.stderr
    plan = result.stderr.index("2 steps on cpu at ~")  # --steps wins over the CPU default
    assert "step 1/2" not in result.stderr[:plan] and plan < result.stderr.index("step 2/2")
    meta = deeplab.load(out)[1]
    assert meta.provenance["steps"] == 2 and meta.provenance["device"] == "cpu"
    assert isinstance(meta.provenance["class_weights"], dict)
    usage = " ".join(CliRunner().invoke(app, ["train", "--help"]).output.split())
    assert "--steps <int> Training steps" in usage and "500 on a GPU, 100 on a CPU" in usage
    for extra, reason in [
        (["--masks", str(masks)], "either masks or coco"),
        (["--class-weights", "some"], "--class-weights 'some': must be 'auto' or 'none'"),
        (["--device", "nonsense"], "device 'nonsense'"),
        (["--steps", "0"], "--steps 0: must be greater than or equal to 1"),
        (["--init", str(tmp_path / "none.pt")], "none.pt: cannot read checkpoint"),
    ]:
        bad = CliRunner().invoke(app, [*args, *small, *extra], env={"COLUMNS": "200"})
        assert bad.exit_code == 2, bad.output
        assert reason in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(empty / "other.png")
    bad = CliRunner().invoke(
        app, ["train", "--images", str(empty), "--coco", str(coco), "--out", str(out), *small]
    )
    assert bad.exit_code == 2 and "has a usable label" in bad.stderr


class Recorder:
    """A listener that keeps what it hears, in order: stage texts, plans and (step, steps)."""

    def __init__(self) -> None:
        self.heard: list[str | Plan | tuple[int, int]] = []

    def stage(self, text: str) -> None:
        self.heard.append(text)

    def planned(self, plan: Plan) -> None:
        self.heard.append(plan)

    def step(self, entry: StepLog, steps: int) -> None:
        self.heard.append((entry.step, steps))


def test_without_steps_a_cpu_trains_its_default_and_tells_the_plan_after_timing_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_steps(torch.device("cuda:0")) == 500  # a GPU's default is unchanged
    monkeypatch.setattr(pipeline.training.finetune, "CPU_STEPS", 4)  # the real one takes minutes
    assert default_steps(torch.device("cpu")) == 4
    images, masks = write_set(tmp_path, new_layout(7, 3, 48))
    out = tmp_path / "default.safetensors"
    config = FinetuneConfig(
        images=str(images), masks=str(masks), out=str(out), batch_size=2, crop=32, device="cpu"
    )
    recorder = Recorder()
    result = finetune(config, recorder)
    plans = [h for h in recorder.heard if isinstance(h, Plan)]
    assert len(plans) == 1 and plans[0].steps == 4 and plans[0].device == torch.device("cpu")
    assert plans[0].seconds_per_step > 0 and plans[0].seconds > 0
    at = recorder.heard.index(plans[0])
    assert recorder.heard[at - 1 : at + 2] == [(2, 4), plans[0], (3, 4)]  # steps 2, 3 timed
    assert [h for h in recorder.heard if isinstance(h, tuple)] == [(n, 4) for n in range(1, 5)]
    provenance = deeplab.load(out)[1].provenance
    assert provenance["steps"] == result.meta.provenance["steps"] == 4
    assert provenance["device"] == "cpu"


def test_cli_on_a_terminal_tells_the_plan_and_the_bar_reaches_the_last_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.cli import app
    from flows.cli import train as cli_train

    monkeypatch.setattr(pipeline.training.finetune, "CPU_STEPS", 3)
    screen = io.StringIO()
    monkeypatch.setattr(cli_train, "console", Console(file=screen, force_terminal=True, width=200))
    images, masks = write_set(tmp_path, new_layout(8, 3, 48))
    out = tmp_path / "bar.safetensors"
    args = ["--images", str(images), "--masks", str(masks), "--out", str(out)]
    small = ["--batch-size", "2", "--crop", "32", "--device", "cpu"]
    result = CliRunner().invoke(app, ["train", *args, *small])
    assert result.exit_code == 0, result.output
    shown = screen.getvalue()
    assert "3 steps on cpu at ~" in shown and "--steps N to change" in shown
    assert "3/3" in shown and "4/3" not in shown
    assert deeplab.load(out)[1].provenance["steps"] == 3


@pytest.mark.slow
def test_train_flow_writes_the_checkpoint_and_an_artifact(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.testing.utilities import prefect_test_harness

    from flows.train import train_flow

    images, masks = write_set(tmp_path, new_layout(6, 3, 48))
    config = FinetuneConfig(
        images=str(images),
        masks=str(masks),
        out=str(tmp_path / "flow.safetensors"),
        steps=1,
        batch_size=2,
        crop=32,
        device="cpu",
    )
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=90):
        result = train_flow(config)
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts()
    assert deeplab.load(result.out)[1].model_version == result.meta.model_version
    assert any(a.key == "train" and result.meta.model_version in str(a.data) for a in artifacts)
