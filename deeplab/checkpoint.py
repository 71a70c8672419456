"""Checkpoint files: the project's own format, and torchvision / VainF / smp files read safely.

The own format is one safetensors file whose header metadata holds the :class:`ModelMeta` JSON,
so weights and what they mean travel together. Foreign ``.pth`` files are read with
``torch.load(weights_only=True)`` only: unpickling arbitrary objects would run their code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from pydantic import ValidationError
from torch import Tensor

from deeplab.convert import convert_state_dict, detect, strip_data_parallel
from deeplab.errors import CheckpointError
from deeplab.files import write_atomic
from deeplab.meta import VOC_CLASSES, ModelMeta, model_version
from deeplab.model import DeepLab

log = logging.getLogger(__name__)

META_KEY = "prelabel.meta"
# VainF stores ``best_score`` as numpy.float64; these are the globals such a pickle names
# (numpy 1 and numpy 2 spell the scalar's module differently). Nothing else is let through.
_SCALAR = np._core.multiarray.scalar  # type: ignore[attr-defined]
_NUMPY_GLOBALS: list[Any] = [
    (_SCALAR, "numpy.core.multiarray.scalar"),
    (_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    np.dtypes.Float64DType,
    np.dtypes.Float32DType,
    np.dtypes.Int64DType,
]


def save(model: DeepLab, meta: ModelMeta, path: str | Path) -> ModelMeta:
    """Write weights + metadata atomically; returns the meta with ``model_version`` filled in."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = meta.model_copy(update={"model_version": model_version(state, meta)})
    data = safetensors.torch.save(state, metadata={META_KEY: meta.model_dump_json()})
    write_atomic(Path(path), data)
    return meta


def load(
    path: str | Path,
    *,
    arch: str | None = None,
    classes: tuple[str, ...] | list[str] | None = None,
    output_stride: int | None = None,
) -> tuple[DeepLab, ModelMeta]:
    """Build the model a checkpoint describes and load its weights (strictly), on the CPU.

    Takes the project's own files and torchvision, VainF/DeepLabV3Plus-Pytorch or
    segmentation_models_pytorch files; the family and architecture of a foreign file come from
    its keys. ``arch``, ``classes`` and
    ``output_stride`` override what a foreign file cannot say (own files already say it all).
    """
    path = Path(path)
    state, meta = _read(path)
    if meta is not None:
        if arch or classes or output_stride:
            raise ValueError(
                f"{path}: a prelabel checkpoint carries its own architecture; "
                "arch, classes and output_stride apply to foreign files only"
            )
    else:
        state, meta = _from_foreign(state, str(path), arch, classes, output_stride)
    model = _build(meta, path)
    _load_weights(model, state, meta, path)
    return model.eval(), meta.model_copy(update={"model_version": model_version(state, meta)})


def _read(path: Path) -> tuple[dict[str, Tensor], ModelMeta | None]:
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror})") from exc
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return _read_safetensors(path)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, or a bare pickle
        raise CheckpointError(f"{path}: not a checkpoint (expected safetensors or a PyTorch file)")
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint ({exc})") from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state"), Mapping):
        obj = obj["model_state"]  # VainF's container: model_state, optimizer_state, best_score...
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state dict of tensors")
    return dict(obj), None


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], ModelMeta | None]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (OSError, safetensors.SafetensorError) as exc:
        raise CheckpointError(f"{path}: broken safetensors file ({exc})") from exc
    if META_KEY not in header:
        return state, None
    try:
        return state, ModelMeta.model_validate_json(header[META_KEY])
    except ValidationError as exc:
        raise CheckpointError(f"{path}: metadata is not valid ({exc})") from exc


def _from_foreign(
    state: dict[str, Tensor],
    source: str,
    arch: str | None,
    classes: tuple[str, ...] | list[str] | None,
    output_stride: int | None,
) -> tuple[dict[str, Tensor], ModelMeta]:
    state = strip_data_parallel(state)
    found = detect(state, source, output_stride)
    ours = convert_state_dict(state, found.rules, source)
    num_classes = int(ours["head.classifier.weight"].shape[0])
    names = tuple(classes) if classes else _default_classes(num_classes, source)
    if len(names) != num_classes:
        raise CheckpointError(
            f"{source}: {len(names)} class names given but the classifier has {num_classes} outputs"
        )
    meta = ModelMeta(
        arch=arch or found.arch, options=found.options, class_names=names, source=found.family
    )
    return ours, meta


def _default_classes(num_classes: int, source: str) -> tuple[str, ...]:
    if num_classes == len(VOC_CLASSES):
        return VOC_CLASSES
    log.warning(
        "%s: no class names in the file and %d classes; naming them class_0.. "
        "(pass classes= to name them)",
        source,
        num_classes,
    )
    return tuple(f"class_{i}" for i in range(num_classes))


def _build(meta: ModelMeta, path: Path) -> DeepLab:
    try:
        return meta.build()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {meta.arch!r} ({exc})") from exc


def _load_weights(model: DeepLab, state: dict[str, Tensor], meta: ModelMeta, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit {meta.arch} ({meta.source} layout): "
            f"missing {_few(missing)}, unexpected {_few(unexpected)}, wrong shape {_few(wrong)}"
        )
    model.load_state_dict(state, strict=True)


def _few(keys: list[str], limit: int = 5) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} {keys[:limit]}{more}"
