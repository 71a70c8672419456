"""End to end against a hand-written script and against the model alone, in one run.

    python bench/bench_pipeline.py [--images 48] [--size 640x480] [--device cpu]
                                   [--precision auto|float32|bfloat16] [--batch-size N]
                                   [--compile] [--rounds 3]

Same images (generated scenes saved as JPEGs, decoded at native size), same weights: a
torchvision DeepLabV3-MobileNetV3-Large state dict made with a fixed seed, its BatchNorm
statistics re-estimated on a few scenes so the class maps fragment like a real model's.
  1. script: what a team writes by hand, per image: PIL decode, torchvision model, argmax,
     per-class contours (OpenCV) and RLE (pycocotools), one JSON at the end;
  2. forward only: prelabel's Predictor (forward, upsample, argmax, confidence) on pre-decoded
     batches at the run's settings: the ceiling for the pipeline;
  3. prelabel: ``annotate`` end to end (read, decode, predict, regions, Parquet, COCO).
Model loading is excluded from all three. Prints img/s, prelabel / script (target >= 2.5 on a
2-core CPU) and prelabel / forward-only (target >= 0.85); with bfloat16, how many pixels agree
with float32. On CUDA it also prints the Predictor at batch 1/8/32/64, fp32 vs bf16, and with
``torch.compile``.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import deeplab
from deeplab.scenes import scenes
from pipeline.annotate import annotate
from pipeline.config import RunConfig
from pipeline.models import batch_size_for, load_predictor

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def seeded_model(calibration: list[np.ndarray]) -> torch.nn.Module:
    """Random weights from seed 0, BatchNorm statistics re-estimated on ``calibration``."""
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(calibration) - 1, 2):  # pairs: image pooling's BN needs 2
            model(torch.cat([_tensor(image) for image in calibration[i : i + 2]]))
    return model.eval()


def _tensor(image: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def script(model: torch.nn.Module, paths: list[Path], out: Path) -> int:
    """The hand-written baseline, as a team would write it."""
    records = []
    with torch.no_grad():
        for path in paths:
            image = np.asarray(Image.open(path).convert("RGB"))
            logits = model(_tensor(image))["out"][0]
            class_map = logits.argmax(0).to(torch.uint8).numpy()
            for class_id in np.unique(class_map).tolist():
                if class_id == 0:
                    continue
                mask = (class_map == class_id).astype(np.uint8)
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                rle = mask_utils.encode(np.asfortranarray(mask))
                records.append(
                    {
                        "file": path.name,
                        "class": class_id,
                        "polygons": [c.ravel().tolist() for c in contours if len(c) >= 3],
                        "rle": rle["counts"].decode(),
                        "area": int(mask_utils.area(rle)),
                    }
                )
    out.write_text(json.dumps(records))
    return len(records)


def forward_only(predictor: deeplab.Predictor, images: list[np.ndarray], batch: int) -> None:
    for i in range(0, len(images), batch):
        predictor.predict(images[i : i + batch])


def timed(fn: object, *args: object) -> float:
    start = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: prelabel's own")
    parser.add_argument("--compile", action="store_true", help="prelabel with --compile")
    parser.add_argument("--rounds", type=int, default=3, help="alternated; medians printed")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "images"
        source.mkdir()
        arrays = []
        for i, scene in enumerate(scenes(7, args.images, height=height, width=width)):
            buffer = io.BytesIO()
            Image.fromarray(scene.image).save(buffer, "JPEG", quality=90)
            (source / f"{i:04d}.jpg").write_bytes(buffer.getvalue())
            arrays.append(np.asarray(Image.open(buffer).convert("RGB")))
        paths = sorted(source.glob("*.jpg"))
        model = seeded_model(arrays[:8])
        checkpoint = root / "deeplabv3_mobilenet_v3_large_seed0.pth"
        torch.save(model.state_dict(), checkpoint)

        config = RunConfig(
            source=str(source),
            out=str(root / "warm-up"),
            model=str(checkpoint),
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            compile=args.compile,
            max_side=max(width, height),
        )
        annotate(config)  # loads and caches the model, starts the tracing processes
        predictor = load_predictor(config)
        batch = batch_size_for(config, predictor.device)
        forward_only(predictor, arrays[:batch], batch)
        script(model, paths[:2], root / "warm-up.json")

        times: dict[str, list[float]] = {"script": [], "forward": [], "prelabel": []}
        for r in range(args.rounds):
            times["script"].append(timed(script, model, paths, root / "script.json"))
            times["forward"].append(timed(forward_only, predictor, arrays, batch))
            run = config.model_copy(update={"out": str(root / f"run-{r}")})
            times["prelabel"].append(timed(annotate, run))
        script_s, forward_s, prelabel_s = (statistics.median(v) for v in times.values())
        agreement = (
            _agreement(predictor, model, arrays[:8]) if predictor.precision != "float32" else None
        )

    n = args.images
    print(
        f"{n} JPEGs {width}x{height}; torchvision DeepLabV3-MobileNetV3-Large (seed 0, BN "
        f"re-estimated), 21 classes; device {predictor.device}, {torch.get_num_threads()} "
        f"threads; prelabel: precision {predictor.precision}, channels_last "
        f"{predictor.channels_last}, batch {batch}, compile {args.compile}; "
        f"median of {args.rounds} alternated rounds"
    )
    print(f"{'path':<36} {'s':>7} {'img/s':>7}   rounds (s)")
    for name, key in (
        ("1. hand-written script", "script"),
        ("2. forward only (prelabel settings)", "forward"),
        ("3. prelabel annotate", "prelabel"),
    ):
        seconds = statistics.median(times[key])
        rounds = " ".join(f"{t:.2f}" for t in times[key])
        print(f"{name:<36} {seconds:>7.2f} {n / seconds:>7.2f}   {rounds}")
    print(f"prelabel / script: {script_s / prelabel_s:.2f}x (target >= 2.5)")
    print(f"prelabel / forward only: {forward_s / prelabel_s:.3f} (target >= 0.85)")
    if agreement is not None:
        print(f"{predictor.precision} vs float32 class maps: {agreement:.3%} of pixels agree")
    if predictor.device.type == "cuda":
        _cuda_table(checkpoint, arrays)


def _agreement(
    predictor: deeplab.Predictor, model: torch.nn.Module, images: list[np.ndarray]
) -> float:
    agree = total = 0
    with torch.no_grad():
        for image, prediction in zip(images, predictor.predict(images), strict=True):
            reference = model.to(predictor.device)(_tensor(image).to(predictor.device))["out"]
            expected = reference[0].argmax(0).to(torch.uint8).cpu().numpy()
            agree += int((expected == prediction.class_map).sum())
            total += expected.size
    return agree / total


def _cuda_table(checkpoint: Path, images: list[np.ndarray]) -> None:
    """img/s of the Predictor at batch 1/8/32/64, fp32 vs bf16, with and without compile."""
    model, meta = deeplab.load(checkpoint)
    print(
        f"{'precision':<10} {'compile':<8} "
        + " ".join(f"{'b' + str(b):>8}" for b in (1, 8, 32, 64))
    )
    for precision in ("float32", "bfloat16"):
        for compiled in (False, True):
            predictor = deeplab.Predictor(
                model, meta, device="cuda", precision=precision, compile=compiled
            )
            rates = []
            for batch in (1, 8, 32, 64):
                stack = (images * (-(-batch // len(images))))[:batch]
                predictor.predict(stack)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(5):
                    predictor.predict(stack)
                torch.cuda.synchronize()
                rates.append(5 * batch / (time.perf_counter() - start))
            print(f"{precision:<10} {compiled!s:<8} " + " ".join(f"{r:>8.1f}" for r in rates))


if __name__ == "__main__":
    main()
