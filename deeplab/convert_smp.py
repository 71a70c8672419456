"""segmentation_models_pytorch (smp) DeepLabV3 / DeepLabV3Plus state dicts: what they are and how
their keys map onto the ``smp_deeplabv3[plus]_*`` builders.

smp stores neither its encoder's name nor its output stride, so both come from the keys and
shapes here (output stride: smp's defaults, DeepLabV3 8 and DeepLabV3Plus 16, unless given).
Options that leave no trace in the weights (``decoder_atrous_rates``, ``upsampling``,
``activation``) are taken at smp's defaults; logits are returned before smp's activation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from deeplab.convert import Detected, Rule, preview
from deeplab.errors import CheckpointError

log = logging.getLogger(__name__)

SMP_ENCODERS = ("resnet50", "resnet101", "mobilenet_v2")
_HIGH_CHANNELS = {"resnet50": 2048, "resnet101": 2048, "mobilenet_v2": 1280}
_FIRST_CONV = {"resnet": "encoder.conv1.weight", "mobilenet_v2": "encoder.features.0.0.weight"}
_DECODER_CHANNELS = 256

_ENCODER_RULES: list[Rule] = [
    (r"^encoder\.(conv1|bn1|layer[1-4])\.", r"backbone.\1."),
    (r"^encoder\.features\.(\d+)\.", r"backbone.features.\1."),
    (r"^segmentation_head\.0\.", "head.classifier."),
    # smp's aux_params head: an image-level classifier the masks never use.
    (r"^classification_head\.", None),
]
SMP_V3_RULES: list[Rule] = [
    *_ENCODER_RULES,
    # smp < 0.4 kept the decoder as a Sequential (decoder.0/1/2); smp renames those on load too.
    (r"^decoder\.(?:aspp|0)\.", "head.aspp."),
    (r"^decoder\.(?:conv|1)\.", "head.block.0."),
    (r"^decoder\.(?:bn|2)\.", "head.block.1."),
]
SMP_PLUS_RULES: list[Rule] = [
    *_ENCODER_RULES,
    (r"^decoder\.aspp\.0\.", "head.aspp."),
    (r"^decoder\.aspp\.1\.", "head.aspp_block.0."),
    (r"^decoder\.aspp\.2\.", "head.aspp_block.1."),
    (r"^decoder\.block1\.", "head.low_level."),
    (r"^decoder\.block2\.", "head.fuse."),
]


def is_smp(state: Mapping[str, Tensor]) -> bool:
    return "segmentation_head.0.weight" in state and any(k.startswith("encoder.") for k in state)


def detect_smp(state: Mapping[str, Tensor], source: str, output_stride: int | None) -> Detected:
    if "decoder.block1.0.weight" in state:
        kind, aspp, rules, default_stride = "DeepLabV3Plus", "decoder.aspp.0.", SMP_PLUS_RULES, 16
    elif any(f"decoder.{p}.convs.0.0.weight" in state for p in ("aspp", "0")):
        kind, aspp, rules, default_stride = "DeepLabV3", "decoder.aspp.", SMP_V3_RULES, 8
        if "decoder.0.convs.0.0.weight" in state:
            aspp = "decoder.0."
    else:
        raise CheckpointError(
            f"{source}: an smp model, but not DeepLabV3 or DeepLabV3Plus (only those load); "
            f"decoder keys start {preview(_prefixes(state, 'decoder.'))}"
        )
    encoder = _encoder_of(state, source, kind)
    first = state[_FIRST_CONV["resnet" if encoder.startswith("resnet") else encoder]]
    entry = state.get(f"{aspp}convs.0.0.weight")  # ASPP's 1x1 branch: out x in x 1 x 1
    if entry is None:
        raise _refusal(source, kind, encoder, f"no ASPP key {aspp}convs.0.0.weight")
    if first.shape[1] != 3:
        raise _refusal(
            source, kind, encoder, f"in_channels={first.shape[1]} (3, RGB, is supported)"
        )
    if entry.shape[0] != _DECODER_CHANNELS:
        raise _refusal(
            source, kind, encoder, f"decoder_channels={entry.shape[0]} (256 is supported)"
        )
    if entry.shape[1] != _HIGH_CHANNELS[encoder]:
        raise _refusal(
            source,
            kind,
            encoder,
            f"its ASPP reads {entry.shape[1]} channels, not the last stage's "
            f"{_HIGH_CHANNELS[encoder]} (encoder_depth 5 is supported)",
        )
    if any(key.startswith("classification_head.") for key in state):
        log.info("%s: dropped smp's classification_head (image-level; masks do not use it)", source)
    if state["segmentation_head.0.weight"].shape[0] == 1:
        log.warning(
            "%s: one output channel: an smp binary model, read through a sigmoid; the argmax "
            "over one class labels every pixel 0 (retrain with classes=2 to label with it)",
            source,
        )
    options: dict[str, Any] = {
        "output_stride": output_stride or default_stride,
        "separable": f"{aspp}convs.1.0.0.weight" in state,  # depthwise inside a Sequential
        "aspp_rates": [12, 24, 36],
        "aspp_dropout": 0.5,
    }
    arch = f"smp_{kind.lower()}_{encoder}"
    return Detected("smp", arch, options, rules)


def _encoder_of(state: Mapping[str, Tensor], source: str, kind: str) -> str:
    layer3 = re.compile(r"encoder\.layer3\.(\d+)\.")
    blocks = len({m.group(1) for key in state if (m := layer3.match(key))})
    if "encoder.layer1.0.conv3.weight" in state:  # bottleneck blocks
        conv2 = state["encoder.layer1.0.conv2.weight"]
        name = {6: "resnet50", 23: "resnet101"}.get(blocks)
        if conv2.shape[0] != conv2.shape[1]:
            raise _refusal(source, kind, "a ResNeXt (grouped 3x3 convs)", None, state)
        if name is not None:
            return name
        raise _refusal(source, kind, f"a ResNet with {blocks} blocks in layer3", None, state)
    if "encoder.layer1.0.conv1.weight" in state:  # basic blocks
        name = {2: "resnet18", 6: "resnet34"}.get(blocks, "a ResNet with basic blocks")
        raise _refusal(source, kind, name, None, state)
    last = state.get("encoder.features.18.0.weight")
    if last is not None and tuple(last.shape) == (1280, 320, 1, 1):
        return "mobilenet_v2"
    raise _refusal(source, kind, "one this library does not recognise", None, state)


def _refusal(
    source: str,
    kind: str,
    encoder: str,
    why: str | None,
    state: Mapping[str, Tensor] | None = None,
) -> CheckpointError:
    """The one-line refusal: what was found, and what is supported. ``why`` None: the encoder
    itself is what differs."""
    if why is None:
        seen = preview(_prefixes(state or {}, "encoder."))
        return CheckpointError(
            f"{source}: an smp {kind} whose encoder is {encoder}; supported encoders: "
            f"{', '.join(SMP_ENCODERS)}; encoder keys start {seen}"
        )
    return CheckpointError(f"{source}: an smp {kind} ({encoder} encoder) with {why}")


def _prefixes(state: Mapping[str, Tensor], start: str) -> list[str]:
    """Distinct first two name parts of the keys under ``start`` (``encoder.layer1``, ...)."""
    found = {".".join(key.split(".")[:2]): None for key in state if key.startswith(start)}
    return list(found)
