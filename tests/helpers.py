"""Test-only helpers shared by several test modules."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn


def randomize_batchnorm_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    With the defaults (mean 0, var 1, weight 1, bias 0) two models with swapped or missing BN
    buffers would still agree; random values make such a mistake visible in the outputs.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def rasterize(polygons: Sequence[Sequence[Sequence[float]]], height: int, width: int) -> np.ndarray:
    """The reference rasterizer: pycocotools fills each ring; exteriors minus their holes,
    unioned over polygons."""

    def fill(ring: Sequence[float]) -> np.ndarray:
        rle = mask_utils.frPyObjects([list(ring)], height, width)
        return np.asarray(mask_utils.decode(rle)[:, :, 0], bool)

    out = np.zeros((height, width), bool)
    for exterior, *holes in polygons:
        part = fill(exterior)
        for hole in holes:
            part &= ~fill(hole)
        out |= part
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
