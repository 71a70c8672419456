"""Run trained weights at another output stride, as DeepLab does when it trains at OS16 and
evaluates at OS8.

Output stride changes strides and dilations, never a weight's shape, so the same state dict
loads into the rebuilt model. The ASPP rates are scaled by old / new stride so each branch
keeps the field of view, in input pixels, that it was trained with.
"""

from __future__ import annotations

from deeplab.features import check_output_stride
from deeplab.meta import ModelMeta, model_version
from deeplab.model import DeepLab

__all__ = ["at_output_stride", "output_stride_of"]

BUILDER_DEFAULT_STRIDE = 16  # what the builders use when a checkpoint's options omit it


def output_stride_of(meta: ModelMeta) -> int:
    stride = meta.options.get("output_stride", BUILDER_DEFAULT_STRIDE)
    assert isinstance(stride, int)
    return stride


def at_output_stride(
    model: DeepLab, meta: ModelMeta, output_stride: int
) -> tuple[DeepLab, ModelMeta]:
    """The model rebuilt at ``output_stride`` with the same weights, and its meta.

    The meta's options name the new stride and rates, so ``model_version`` changes with them:
    labels made at OS8 are never mistaken for the same model's labels at OS16.
    """
    check_output_stride(output_stride)
    trained = output_stride_of(meta)
    if output_stride == trained:
        return model, meta
    rates = model.head.aspp.rates  # what it runs with: the paper's, or a family's own (smp's)
    scaled = [max(1, round(r * trained / output_stride)) for r in rates]
    options = {**meta.options, "output_stride": output_stride, "aspp_rates": scaled}
    rebuilt_meta = meta.model_copy(update={"options": options})
    rebuilt = rebuilt_meta.build()
    state = model.state_dict()
    rebuilt.load_state_dict(state, strict=True)
    version = model_version(state, rebuilt_meta)
    return rebuilt.eval(), rebuilt_meta.model_copy(update={"model_version": version})
