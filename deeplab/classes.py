"""A model for another list of classes: the classifier's rows carried over by class name.

Fine-tuning on labels with classes the starting model lacks (or lacks some of) starts from
everything the model knows: every layer as it is, and each kept class's classifier row.
"""

from __future__ import annotations

import torch

from deeplab.meta import ModelMeta
from deeplab.model import DeepLab


def with_classes(
    model: DeepLab, meta: ModelMeta, names: tuple[str, ...]
) -> tuple[DeepLab, ModelMeta, str]:
    """The model for ``names``: itself when they are its classes, else a copy whose classifier
    rows are carried over by class name and start fresh for new classes."""
    if names == meta.class_names:
        return model, meta, f"kept the starting model's {len(names)} classes"
    new_meta = ModelMeta(
        arch=meta.arch, options=meta.options, class_names=names, mean=meta.mean, std=meta.std
    )
    fresh = new_meta.build()
    rows = [(i, meta.class_names.index(n)) for i, n in enumerate(names) if n in meta.class_names]
    classifier = _classifier_keys(fresh)
    old = model.state_dict()
    with torch.no_grad():
        for key, value in fresh.state_dict().items():
            if key in classifier:
                for new_row, old_row in rows:
                    value[new_row] = old[key][old_row]
            else:
                value.copy_(old[key])
    kept = [names[i] for i, _ in rows]
    return (
        fresh,
        new_meta,
        f"classifier re-initialised for {len(names)} classes ({', '.join(names)}); "
        f"rows of {', '.join(kept) or 'none'} carried over by name",
    )


def _classifier_keys(model: DeepLab) -> set[str]:
    layers: list[torch.nn.Module] = [model.head.classifier]
    if model.aux_head is not None:
        layers.append(model.aux_head[-1])
    return {
        f"{name}.{param}"
        for name, module in model.named_modules()
        if any(module is layer for layer in layers)
        for param, _ in module.named_parameters(recurse=False)
    }
