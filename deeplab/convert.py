"""Foreign state dicts (torchvision, VainF/DeepLabV3Plus-Pytorch, smp) renamed to this library's
keys (smp's in :mod:`deeplab.convert_smp`).

Everything here is pure: a mapping of tensors in, a mapping out, so it is testable without files.
Every foreign key is either renamed or dropped on purpose; ``load_state_dict(strict=True)`` then
checks shapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from deeplab.errors import CheckpointError
from deeplab.meta import Family

Rule = tuple[str, str | None]  # (regex on the foreign key, replacement; None drops the key)


_RESNET_BACKBONE: list[Rule] = [(r"^backbone\.(conv1|bn1|layer[1-4])\.", r"backbone.\1.")]

TORCHVISION_RULES: list[Rule] = [
    *_RESNET_BACKBONE,
    (r"^backbone\.(\d+)\.", r"backbone.features.\1."),  # MobileNetV3's IntermediateLayerGetter
    (r"^classifier\.0\.", "head.aspp."),
    (r"^classifier\.1\.", "head.block.0."),
    (r"^classifier\.2\.", "head.block.1."),
    (r"^classifier\.4\.", "head.classifier."),
    (r"^aux_classifier\.", "aux_head."),
]

_VAINF_BACKBONE: list[Rule] = [
    *_RESNET_BACKBONE,
    # VainF slices MobileNetV2's ``features`` into two Sequentials that keep the original indices.
    (r"^backbone\.(?:low|high)_level_features\.(\d+)\.", r"backbone.features.\1."),
]
VAINF_PLUS_RULES: list[Rule] = [
    *_VAINF_BACKBONE,
    (r"^classifier\.aspp\.", "head.aspp."),
    (r"^classifier\.project\.", "head.low_level."),
    (r"^classifier\.classifier\.0\.", "head.fuse.0.0."),
    (r"^classifier\.classifier\.1\.", "head.fuse.0.1."),
    (r"^classifier\.classifier\.3\.", "head.classifier."),
]
VAINF_V3_RULES: list[Rule] = [
    *_VAINF_BACKBONE,
    (r"^classifier\.classifier\.0\.", "head.aspp."),
    (r"^classifier\.classifier\.1\.", "head.block.0."),
    (r"^classifier\.classifier\.2\.", "head.block.1."),
    (r"^classifier\.classifier\.4\.", "head.classifier."),
]


def convert_state_dict(
    foreign: Mapping[str, Tensor], rules: Sequence[Rule], source: str
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for key, value in foreign.items():
        rule = next(((p, r) for p, r in rules if re.match(p, key)), None)
        if rule is None:
            unmatched.append(key)
        elif rule[1] is not None:
            out[re.sub(rule[0], rule[1], key, count=1)] = value
    if unmatched:
        raise CheckpointError(f"{source}: no rule for keys {preview(unmatched)}")
    return out


@dataclass(frozen=True, slots=True)
class Detected:
    """What the keys say: which family wrote the file, which architecture, with which options."""

    family: Family
    arch: str
    options: dict[str, Any]
    rules: list[Rule]


def strip_data_parallel(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoints saved from ``nn.DataParallel`` prefix every key with ``module.``."""
    if state and all(key.startswith("module.") for key in state):
        return {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def detect(state: Mapping[str, Tensor], source: str, output_stride: int | None) -> Detected:
    """Tell torchvision, VainF and smp files apart, and their backbone and head, from key names.

    Output stride is not in the weights: torchvision's are fixed by its builders (ResNet OS8,
    MobileNetV3 OS16), VainF's default to OS16 as its training script does, smp's to its own
    defaults; ``output_stride`` overrides.
    """
    from deeplab import convert_smp  # imported here: it imports this module

    if convert_smp.is_smp(state):
        return convert_smp.detect_smp(state, source, output_stride)
    if "classifier.0.convs.0.0.weight" in state:
        backbone = _backbone_of(state, source, family="torchvision")
        fixed = 8 if backbone.startswith("resnet") else 16
        options: dict[str, Any] = {
            "output_stride": output_stride or fixed,
            "aspp_rates": [12, 24, 36],  # torchvision's, at OS8 and OS16 alike
            "aspp_dropout": 0.5,
            "aux": any(key.startswith("aux_classifier.") for key in state),
        }
        return Detected("torchvision", f"deeplabv3_{backbone}", options, TORCHVISION_RULES)
    if any(".body.0.weight" in key for key in state if key.startswith("classifier.")):
        raise CheckpointError(
            f"{source}: VainF checkpoints with separable convs are not supported "
            "(their separable layout has no BN between depthwise and pointwise)"
        )
    vainf_options: dict[str, Any] = {"output_stride": output_stride or 16, "aspp_dropout": 0.1}
    if "classifier.project.0.weight" in state:
        backbone = _backbone_of(state, source, family="vainf")
        vainf_options["decoder_convs"] = 1
        return Detected("vainf", f"deeplabv3plus_{backbone}", vainf_options, VAINF_PLUS_RULES)
    if "classifier.classifier.0.convs.0.0.weight" in state:
        backbone = _backbone_of(state, source, family="vainf")
        return Detected("vainf", f"deeplabv3_{backbone}", vainf_options, VAINF_V3_RULES)
    raise CheckpointError(
        f"{source}: keys look like no known DeepLab checkpoint (prelabel, torchvision, "
        f"VainF/DeepLabV3Plus-Pytorch or smp); first keys: {preview(list(state))}"
    )


def _backbone_of(state: Mapping[str, Tensor], source: str, family: Family) -> str:
    if "backbone.layer3.0.conv1.weight" in state:
        layer3 = re.compile(r"backbone\.layer3\.(\d+)\.")
        blocks = {m.group(1) for key in state if (m := layer3.match(key))}
        depth = {6: "resnet50", 23: "resnet101"}.get(len(blocks))
        if depth is None:
            raise CheckpointError(
                f"{source}: a ResNet with {len(blocks)} blocks in layer3 "
                "is neither ResNet-50 (6) nor ResNet-101 (23)"
            )
        return depth
    if family == "torchvision" and "backbone.0.0.weight" in state:
        return "mobilenet_v3_large"
    if family == "vainf" and "backbone.low_level_features.0.0.weight" in state:
        return "mobilenet_v2"
    raise CheckpointError(
        f"{source}: a {family} DeepLab checkpoint with a backbone this library does not load "
        f"(ResNet-50/101{', MobileNetV3-Large' if family == 'torchvision' else ', MobileNetV2'} "
        f"are supported); backbone keys start {preview([k for k in state if 'backbone' in k])}"
    )


def preview(keys: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return f"[{shown}{f', ... {len(keys) - limit} more' if len(keys) > limit else ''}]"
