"""``prelabel models``: the models ``--model`` takes by name, and fetching one with a bar."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from flows.cli.common import console
from pipeline.config import RunConfig, default_cache_dir
from pipeline.labeling.zoo import NAMED, converted, fetch, is_named

app = typer.Typer()


@app.command("models")
def models_command() -> None:
    """List the models --model takes by name: what they recognise, the publisher's figures,
    and whether this machine has them (the first run downloads one, once)."""
    cache = default_cache_dir()
    table = Table(title="prelabel models", title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("classes", "trained on", "mIoU", "size", "license", "here"):
        table.add_column(column)
    table.add_row("demo", "5 (shapes)", "synthetic scenes", "90.2%", "19 MB", "project", "bundled")
    for model in NAMED.values():
        table.add_row(
            model.name,
            model.classes,
            model.data,
            f"{model.miou:.1f}%",
            f"{model.megabytes:.0f} MB",
            model.license,
            "cached" if converted(model, cache).exists() else "on first use",
        )
    console.print(table)
    console.print(
        "mIoU as each publisher reports it: the demo on 200 fresh 320x320 scenes of its own "
        "kind, torchvision's on COCO val2017 with VOC labels. --model NAME downloads once "
        f"into {cache / 'models'} (PRELABEL_CACHE_DIR), then runs offline.",
        highlight=False,
        markup=False,
    )


def fetch_with_bar(config: RunConfig) -> None:
    """A named model not yet on this machine, downloaded with a bar before the run starts."""
    if not is_named(config.model):
        return
    cache = config.cache_dir or default_cache_dir()
    if converted(NAMED[config.model], cache).exists():
        return
    bar = Progress(
        TextColumn(f"downloading {config.model}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("download", total=None)
    with bar:
        fetch(
            config.model,
            cache,
            mirror=config.model_mirror,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(f"{config.model}: kept in {cache / 'models'}", highlight=False, markup=False)
