"""The one forward contract every DeepLab variant shares: logits at the input size."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from deeplab.features import Backbone
from deeplab.heads import DeepLabV3Head, DeepLabV3PlusHead, FCNHead


class DeepLab(nn.Module):
    """Backbone + head (+ optional auxiliary head used in training).

    ``forward`` returns class logits upsampled bilinearly to the input size, for any input size.
    ``forward_logits`` stops before that upsampling, so a caller that wants another output size
    (the original image size, say) interpolates once instead of twice.
    """

    def __init__(
        self,
        backbone: Backbone,
        head: DeepLabV3Head | DeepLabV3PlusHead,
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

    def forward_logits(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return _resize(self.forward_logits(x), x)

    def forward_with_aux(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Main and auxiliary logits at the input size (auxiliary None without an aux head)."""
        features = self.backbone(x)
        out = _resize(self.head(features), x)
        if self.aux_head is None or features.aux is None:
            return out, None
        return out, _resize(self.aux_head(features.aux), x)


def _resize(logits: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=False)
