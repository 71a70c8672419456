"""Large images in overlapping tiles, blended before the argmax so that no seam shows.

Tiles run in batches through the model; each tile's logits, upsampled to the tile and weighted by
a ramp that falls towards its inner edges, are added into a band of rows as tall as one tile and
as wide as the image. Rows no later tile reaches are finished (normalised, argmax, confidence)
and leave the band, so memory is one band plus one tile batch, whatever the image's height.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.nn import functional as F

Forward = Callable[[np.ndarray], torch.Tensor]  # NxHxWx3 uint8 -> N x C x h x w logits


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts covering ``length`` with tiles of ``tile`` overlapping by at least ``overlap``;
    the last tile ends at the edge, so every tile is whole when ``length >= tile``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    count = -(-(length - tile) // step) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def ramp(length: int, *, begin_overlap: int, end_overlap: int) -> torch.Tensor:
    """1-D weights of a tile: rising over the overlap it shares with the tile before it and
    falling over the one it shares with the tile after, 1 elsewhere; never 0."""
    weights = torch.ones(length)
    if begin_overlap:
        weights[:begin_overlap] = torch.linspace(0, 1, begin_overlap + 2)[1:-1]
    if end_overlap:
        weights[length - end_overlap :] = torch.linspace(1, 0, end_overlap + 2)[1:-1]
    return weights


def predict_tiled(
    forward: Forward,
    image: np.ndarray,
    *,
    tile: int,
    overlap: int,
    batch_size: int,
    device: torch.device,
    align_corners: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class map, max-softmax confidence) of one large HxWx3 uint8 image, both H x W;
    ``align_corners`` is the model's (:attr:`deeplab.DeepLab.align_corners`)."""
    height, width = image.shape[:2]
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    classes = torch.empty((height, width), dtype=torch.uint8)
    confidence = torch.empty((height, width), dtype=torch.float32)
    band: torch.Tensor | None = None  # C x th x width: the rows of the current tile row
    weight = torch.zeros((th, width), device=device)
    pending: torch.Tensor | None = None  # rows carried from the previous tile row
    pending_weight: torch.Tensor | None = None
    for row, y in enumerate(ys):
        prev_end = ys[row - 1] + th if row else 0
        next_start = ys[row + 1] if row + 1 < len(ys) else height
        wy = ramp(
            th, begin_overlap=max(0, prev_end - y), end_overlap=max(0, y + th - next_start)
        ).to(device)
        tiles = [(x, image[y : y + th, x : x + tw]) for x in xs]
        for chunk in _chunks(tiles, batch_size):
            logits = forward(np.stack([t for _, t in chunk]))
            up = F.interpolate(
                logits.float(), size=(th, tw), mode="bilinear", align_corners=align_corners
            )
            if band is None:
                band = torch.zeros((up.shape[1], th, width), device=device)
            for (x, _), tile_logits in zip(chunk, up, strict=True):
                column = xs.index(x)
                prev_x_end = xs[column - 1] + tw if column else 0
                next_x = xs[column + 1] if column + 1 < len(xs) else width
                wx = ramp(
                    tw, begin_overlap=max(0, prev_x_end - x), end_overlap=max(0, x + tw - next_x)
                ).to(device)
                w = wy[:, None] * wx[None, :]
                band[:, :, x : x + tw] += tile_logits * w
                weight[:, x : x + tw] += w
        assert band is not None
        if pending is not None and pending_weight is not None:
            carried = pending.shape[1]  # rows y .. y + carried overlap the previous tile row
            band[:, :carried] += pending
            weight[:carried] += pending_weight
        done = (next_start - y) if row + 1 < len(ys) else th  # rows no later tile reaches
        _finish(band[:, :done], weight[:done], classes, confidence, y)
        pending, pending_weight = band[:, done:].clone(), weight[done:].clone()
        band.zero_()
        weight.zero_()
    return classes, confidence


def _finish(
    logits: torch.Tensor,
    weight: torch.Tensor,
    classes: torch.Tensor,
    confidence: torch.Tensor,
    y: int,
) -> None:
    blended = logits / weight
    top, best = blended.max(dim=0)
    rows = slice(y, y + blended.shape[1])
    classes[rows] = best.to(torch.uint8).cpu()
    confidence[rows] = torch.exp(blended - top).sum(dim=0).reciprocal().cpu()


def _chunks(
    items: list[tuple[int, np.ndarray]], size: int
) -> Iterator[list[tuple[int, np.ndarray]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
