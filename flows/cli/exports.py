"""``prelabel export RUN``: the formats written from a run's records; ``prelabel export-model``:
the model for other runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from flows.cli.common import cannot_start, console, describe
from pipeline.formats import EXPORTERS, ExportOptions, check_formats, open_run
from pipeline.formats import export as write_exports
from pipeline.formats.label_studio import check_image_urls
from pipeline.labeling.model_ids import resolve_checkpoint
from pipeline.run.view import recorded_formats

_SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}
_FORMATS = ", ".join(EXPORTERS)

app = typer.Typer()


@app.command("export")
def export_command(
    run: Annotated[str, typer.Argument(help="A finished run folder.")],
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help=f"Format to write (repeat): {_FORMATS}.",
            show_default="the formats the run was made with, else coco",
        ),
    ] = None,
    ls_regions: Annotated[
        str, typer.Option(help="Label Studio results: polygon (brush where needed) or brush.")
    ] = "polygon",
    image_url_prefix: Annotated[
        str | None, typer.Option(metavar="URL", help="Label Studio image URL = prefix + key.")
    ] = None,
    local_files_root: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Label Studio image URL = /data/local-files/?d= + the image's path under DIR, "
            "Label Studio's LOCAL_FILES_DOCUMENT_ROOT.",
        ),
    ] = None,
    wkb: Annotated[bool, typer.Option("--wkb", help="parquet: add a WKB geometry column.")] = False,
    split: Annotated[
        int | None,
        typer.Option(
            "--split",
            metavar="N",
            help="Label Studio: tasks in files of at most N (label-studio/tasks-NNNNN.json), "
            "each imported on its own.",
            show_default="one label-studio.json",
        ),
    ] = None,
) -> None:
    """Write exports from a run's records; the model is not run again.

    Label Studio tasks point at the images' source paths unless --image-url-prefix or
    --local-files-root says where Label Studio finds them.
    """
    flags = {
        "ls_regions": "--ls-regions",
        "image_url_prefix": "--image-url-prefix",
        "local_files_root": "--local-files-root",
        "ls_split": "--split",
    }
    try:
        options = ExportOptions(
            ls_regions=ls_regions,
            image_url_prefix=image_url_prefix,
            local_files_root=local_files_root,
            wkb=wkb,
            ls_split=split,
        )
        chosen = tuple(formats) if formats else recorded_formats(run)
        check_formats(chosen)
        view = open_run(run)
        # Before any format is written: a refused image URL leaves no export half-done.
        notice = check_image_urls(view, options) if "label-studio" in chosen else None
        written = write_exports(view, chosen, options)
    except ValidationError as exc:
        cannot_start("; ".join(describe(e, flags) for e in exc.errors()))
    for uri in written:
        console.print(f"wrote {uri}", highlight=False, markup=False, soft_wrap=True)
    if notice is not None:
        console.print(f"note: {notice}", highlight=False, markup=False, soft_wrap=True)


@app.command("export-model")
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
    except OSError as exc:  # the output cannot be written
        cannot_start(str(exc))
    console.print(
        f"wrote {out}: {meta.arch}, {len(meta.class_names)} classes, model {meta.model_version}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
