"""Compute counted the way papers and torchvision report it: multiply-accumulates (MACs)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from deeplab.model import DeepLab


def count_gmacs(model: DeepLab, height: int, width: int, *, with_aux: bool = False) -> float:
    """GMACs of one forward pass on one image (FLOPs / 2, convs and matmuls as torch counts them).

    Runs on the model's device; build the model under ``torch.device("meta")`` to count without
    computing anything.
    """
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, height, width, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if with_aux:
            model.forward_with_aux(x)
        else:
            model(x)
    flops: int = counter.get_total_flops()
    return flops / 2e9
