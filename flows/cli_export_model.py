"""``prelabel export-model CKPT --format onnx|openvino --out PATH``: the model for other
runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deeplab.errors import CheckpointError, EngineError
from flows.cli_common import cannot_start, console
from pipeline.labeling.model_ids import resolve_checkpoint

_SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}


def export_model_command(
    checkpoint: Annotated[str, typer.Argument(help="'demo' or a checkpoint file.")],
    format: Annotated[str, typer.Option("--format", "-f", help="onnx or openvino.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="File to write: .onnx, or .xml (+ .bin).")
    ],
) -> None:
    """Write the model for ONNX Runtime, Triton, CVAT or OpenVINO Model Server: float32
    normalized N x 3 x H x W in (batch and size free), logits at the input size out; the
    class names, mean and std are in the file's metadata."""
    if format not in _SUFFIX:
        cannot_start(f"--format {format!r}: choose onnx or openvino")
    if out.suffix != _SUFFIX[format]:
        cannot_start(f"--out {out}: {format} models are written to {_SUFFIX[format]} files")
    import deeplab  # torch: loaded once the command is checked
    from deeplab.export import export_model

    try:
        model, meta = deeplab.load(resolve_checkpoint(checkpoint))
        export_model(model, meta, out, format)  # type: ignore[arg-type]
    except (CheckpointError, EngineError, OSError) as exc:
        cannot_start(str(exc))
    console.print(
        f"wrote {out}: {meta.arch}, {len(meta.class_names)} classes, model {meta.model_version}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
