"""The one forward contract every DeepLab variant shares: logits at the input size."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from deeplab.features import Backbone
from deeplab.heads import DeepLabV3Head, DeepLabV3PlusHead, FCNHead
from deeplab.heads_smp import SmpDeepLabV3Head, SmpDeepLabV3PlusHead

Head = DeepLabV3Head | DeepLabV3PlusHead | SmpDeepLabV3Head | SmpDeepLabV3PlusHead


class DeepLab(nn.Module):
    """Backbone + head (+ optional auxiliary head used in training).

    ``forward`` returns class logits upsampled bilinearly to the input size, for any input size.
    ``forward_logits`` stops before that upsampling, so a caller that wants another output size
    (the original image size, say) interpolates once instead of twice, with
    :meth:`upsample`: the head decides ``align_corners`` (True for smp's layout).
    """

    def __init__(
        self,
        backbone: Backbone,
        head: Head,
        aux_head: FCNHead | None = None,
    ) -> None:
        super().__init__()
        if aux_head is not None and backbone.feature_info.aux_channels is None:
            raise ValueError(f"{type(backbone).__name__} has no stage for an auxiliary head")
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head

    @property
    def num_classes(self) -> int:
        return int(self.head.classifier.out_channels)

    @property
    def align_corners(self) -> bool:
        return self.head.align_corners

    def upsample(self, logits: Tensor, size: Sequence[int]) -> Tensor:
        """Logits (N x C x h x w) bilinearly resized to ``size`` (h, w), as ``forward`` does."""
        return upsample(logits, size, align_corners=self.align_corners)

    def forward_logits(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample(self.forward_logits(x), x.shape[-2:])

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Main and auxiliary logits at the input size (auxiliary None without an aux head)."""
        features = self.backbone(x)
        out = self.upsample(self.head(features), x.shape[-2:])
        if self.aux_head is None or features.aux is None:
            return out, None
        return out, self.upsample(self.aux_head(features.aux), x.shape[-2:])


def upsample(logits: Tensor, size: Sequence[int], *, align_corners: bool) -> Tensor:
    """Bilinear resize; with ``align_corners`` True it equals smp's fixed-factor upsampling
    wherever the size is that factor times the logits' (align_corners ignores the factor)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)
