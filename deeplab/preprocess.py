"""The one place uint8 images become model input, shared by inference and training."""

from __future__ import annotations

import torch

from deeplab.meta import ModelMeta


class Normalizer:
    """uint8 NHWC on the device -> normalized float NCHW, in channels_last memory (the NHWC
    buffer permuted is already channels_last, so no copy is made for the layout)."""

    def __init__(self, meta: ModelMeta, device: torch.device) -> None:
        self.mean = torch.tensor(meta.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(meta.std, device=device).view(1, 3, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor, *, channels_last: bool = True) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected NxHxWx3 uint8, got {images.dtype} {tuple(images.shape)}")
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return x if channels_last else x.contiguous()
