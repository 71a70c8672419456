"""Batched inference: uint8 images in, uint8 class and confidence maps out.

Normalization, upsampling, argmax and confidence all happen on the device, so the only copies
back to the host are two uint8 maps per image; logits never leave the device.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from deeplab.engines import Engine, OpenVinoEngine, Precision, TorchEngine
from deeplab.meta import ModelMeta
from deeplab.model import DeepLab, upsample
from deeplab.tiling import predict_tiled


@dataclass(frozen=True, slots=True)
class Prediction:
    class_map: np.ndarray  # HxW uint8 class ids at the requested output size
    confidence: np.ndarray  # HxW uint8: max softmax probability x 255, rounded
    mean_confidence: float  # 0..1, over all pixels
    low_confidence_share: float  # share of pixels whose max probability is below the threshold


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


class Predictor:
    """Runs a model over batches of RGB uint8 images of any (and mixed) sizes.

    Images of one shape share a forward pass; different shapes get separate passes rather than
    padding, because padding changes the ASPP image-pooling branch and so the prediction itself.
    Batch images by size upstream to keep passes full.
    """

    def __init__(
        self,
        model: DeepLab,
        meta: ModelMeta,
        *,
        device: str = "auto",
        precision: Precision | None = None,
        channels_last: bool = True,
        low_confidence: float = 0.5,
        compile: bool = False,
        engine: Engine = "torch",
        cache_dir: Path | None = None,
    ) -> None:
        """``precision`` None: the engine's default (bfloat16 on CUDA; float32 for torch on a
        CPU; OpenVINO's own choice, bfloat16 where the CPU has it). ``cache_dir`` keeps
        converted models between runs."""
        self.device = resolve_device(device)
        on_cuda = self.device.type == "cuda"
        if precision == "float16" and not on_cuda:
            raise ValueError("float16 inference needs CUDA; use bfloat16 or float32 on the CPU")
        self.low_confidence = low_confidence
        # The same test on the uint8 map: confidence x 255 rounded is under t x 255 exactly
        # when the confidence is under t, but for values rounding up to the threshold.
        self._low_threshold = round(low_confidence * 255)
        self.meta = meta
        self.align_corners = model.align_corners  # how the logits are upsampled (the head's)
        self.engine: TorchEngine | OpenVinoEngine
        if engine == "openvino":
            if on_cuda:
                raise ValueError("the openvino engine runs on the CPU; use --device cpu")
            self.engine = OpenVinoEngine(model, meta, precision=precision, cache_dir=cache_dir)
        else:
            self.engine = TorchEngine(
                model,
                meta,
                self.device,
                precision=precision or ("bfloat16" if on_cuda else "float32"),
                channels_last=channels_last,
                compile=compile,
            )
            if on_cuda:
                torch.backends.cudnn.benchmark = True  # sizes repeat within a run: tune once each
        self.precision: Precision = self.engine.precision

    def predict(
        self,
        images: Sequence[np.ndarray],
        output_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Prediction]:
        """One :class:`Prediction` per image, in order; ``output_sizes`` (h, w) default to each
        image's own size (pass the original size when the image was downscaled for the model)."""
        sizes = list(output_sizes) if output_sizes is not None else [im.shape[:2] for im in images]
        if len(sizes) != len(images):
            raise ValueError(f"{len(images)} images but {len(sizes)} output sizes")
        for i, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"image {i}: expected HxWx3 uint8, not {image.dtype} {image.shape}"
                )
        if isinstance(self.engine, OpenVinoEngine):
            return self._predict_each(self.engine, images, sizes)
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[image.shape].append(i)
        results: list[Prediction | None] = [None] * len(images)
        with torch.inference_mode():
            for indices in groups.values():
                batch = np.stack([images[i] for i in indices])
                logits = self._forward(batch)
                for row, i in enumerate(indices):
                    results[i] = self._decode(logits[row : row + 1], tuple(sizes[i]))
        return [r for r in results if r is not None]

    def _predict_each(
        self, engine: OpenVinoEngine, images: Sequence[np.ndarray], sizes: list[tuple[int, int]]
    ) -> list[Prediction]:
        """OpenVINO takes images one to a request, of any size: those labeled at their own
        size come back decoded in its graph, the others as logits decoded here."""
        own = [i for i, image in enumerate(images) if tuple(sizes[i]) == image.shape[:2]]
        other = [i for i, image in enumerate(images) if tuple(sizes[i]) != image.shape[:2]]
        results: dict[int, Prediction] = {}
        maps = engine.maps_each([images[i] for i in own])
        for i, (classes, confidence) in zip(own, maps, strict=True):
            results[i] = self._from_maps(classes, confidence)
        with torch.inference_mode():
            logits = engine.logits_each([images[i] for i in other])
            for i, scores in zip(other, logits, strict=True):
                results[i] = self._decode(scores, tuple(sizes[i]))
        return [results[i] for i in range(len(images))]

    def _from_maps(self, classes: np.ndarray, confidence: np.ndarray) -> Prediction:
        """A prediction whose maps the engine decoded; its figures from the uint8 confidence,
        by OpenCV's reductions (a tenth of NumPy's time, on the thread that feeds the model)."""
        below = cv2.threshold(confidence, self._low_threshold - 1, 1, cv2.THRESH_BINARY_INV)[1]
        return Prediction(
            class_map=classes,
            confidence=confidence,
            mean_confidence=cv2.sumElems(confidence)[0] / confidence.size / 255,
            low_confidence_share=cv2.countNonZero(below) / confidence.size,
        )

    def predict_tiled(
        self, image: np.ndarray, *, tile: int = 1024, overlap: int = 128, batch_size: int = 4
    ) -> Prediction:
        """One large image in overlapping ``tile`` x ``tile`` windows, ``batch_size`` at a time,
        blended before the argmax; memory grows with the image's width, not its area."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected HxWx3 uint8, not {image.dtype} {image.shape}")
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap {overlap} must be in 0..{tile - 1}")
        with torch.inference_mode():
            classes, confidence = predict_tiled(
                self._forward,
                image,
                tile=tile,
                overlap=overlap,
                batch_size=batch_size,
                device=self.device,
                align_corners=self.align_corners,
            )
        return Prediction(
            class_map=classes.numpy(),
            confidence=(confidence * 255).round_().to(torch.uint8).numpy(),
            mean_confidence=float(confidence.mean()),
            low_confidence_share=float((confidence < self.low_confidence).float().mean()),
        )

    def _forward(self, batch: np.ndarray) -> torch.Tensor:
        return self.engine(batch)

    def _decode(self, logits: torch.Tensor, size: tuple[int, ...]) -> Prediction:
        # Channels last, each pixel's class scores are contiguous: the max and the sum over
        # classes read memory in order, and the exp runs in place on the upsampled scores.
        low = logits.float().contiguous(memory_format=torch.channels_last)
        up = upsample(low, size, align_corners=self.align_corners)[0]
        scores = up.permute(1, 2, 0)  # H x W x C
        top, classes = scores.max(dim=-1)
        # max softmax = 1 / sum(exp(score - max score)), without the softmax itself
        confidence = scores.sub_(top.unsqueeze(-1)).exp_().sum(dim=-1).reciprocal_()
        low_share = (confidence < self.low_confidence).float().mean()
        return Prediction(
            class_map=classes.to(torch.uint8).cpu().numpy(),
            confidence=(confidence * 255).round_().to(torch.uint8).cpu().numpy(),
            mean_confidence=float(confidence.mean()),
            low_confidence_share=float(low_share),
        )
