"""``prelabel train``: fine-tune a checkpoint on reviewed labels."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from flows.cli.common import cannot_start, console, describe, option_flags
from pipeline.quality.evaluate import percent
from pipeline.training.config import CPU_STEPS, GPU_STEPS, FinetuneConfig

if TYPE_CHECKING:
    from deeplab.train import StepLog
    from pipeline.training.finetune import FinetuneResult, Plan

app = typer.Typer()


@app.command("train")
def train_command(
    images: Annotated[str, typer.Option(help="Folder or s3:// prefix of the reviewed images.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Checkpoint file to write.")],
    masks: Annotated[
        str | None, typer.Option(help="Reviewed labels as a masks folder (masks export layout).")
    ] = None,
    coco: Annotated[
        str | None, typer.Option(help="Reviewed labels as COCO instances JSON.")
    ] = None,
    init: Annotated[str, typer.Option(help="Checkpoint to start from: 'demo' or a file.")] = "demo",
    steps: Annotated[
        int | None,
        typer.Option(
            help="Training steps (batches); the time they take is told after the first few.",
            show_default=f"{GPU_STEPS} on a GPU, {CPU_STEPS} on a CPU",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Crops per step.")] = 8,
    crop: Annotated[int, typer.Option(help="Side of the square training crops, pixels.")] = 256,
    val_share: Annotated[
        float, typer.Option(help="Share of images held out to score before and after.")
    ] = 0.2,
    class_weights: Annotated[
        str, typer.Option(help="auto (1/sqrt of pixel frequency) or none.")
    ] = "none",
    lr: Annotated[float, typer.Option(help="Peak learning rate (poly decay to zero).")] = 1e-3,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for crops and new classifier rows.")] = 0,
) -> None:
    """Fine-tune --init on the images under --images and their reviewed labels; write --out.

    Labels with classes the starting model lacks get a new classifier (rows of classes it has
    are kept by name). The checkpoint records the data's hash, the settings and the validation
    mIoU before and after. A CPU step takes seconds: the default there is a few minutes' worth.
    """
    fields: dict[str, Any] = {
        "images": images,
        "masks": masks,
        "coco": coco,
        "init": init,
        "out": out,
        "steps": steps,
        "batch_size": batch_size,
        "crop": crop,
        "val_share": val_share,
        "class_weights": class_weights,
        "lr": lr,
        "device": device,
        "seed": seed,
    }
    try:
        config = FinetuneConfig(**fields)
    except ValidationError as exc:
        cannot_start("; ".join(describe(e, option_flags(fields)) for e in exc.errors()))
    from pipeline.training.finetune import finetune  # torch: loaded once the command is checked

    listener: _Bar | _Lines = _Bar() if console.is_terminal else _Lines()
    try:
        with listener:
            result = finetune(config, listener)
    except ValueError as exc:
        cannot_start(str(exc))
    _print(result)


class _Bar:
    """A rich progress bar over the steps, with the running loss."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.bar.add_task("training", total=None, loss="-", start=False)

    def __enter__(self) -> _Bar:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def stage(self, text: str) -> None:
        self.bar.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def planned(self, plan: Plan) -> None:
        self.stage(_plan_line(plan))

    def step(self, entry: StepLog, steps: int) -> None:
        if not self.bar.tasks[0].started:
            self.bar.start_task(self.task)
        self.bar.update(self.task, total=steps, completed=entry.step, loss=f"{entry.loss:.4f}")


class _Lines:
    """Plain lines for logs and pipes: at most one every few seconds, plus the last."""

    def __init__(self, every_seconds: float = 5.0) -> None:
        self.every = every_seconds
        self.last = math.inf  # no step line before the plan's

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def stage(self, text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    def planned(self, plan: Plan) -> None:
        self.stage(_plan_line(plan))
        self.last = time.perf_counter()

    def step(self, entry: StepLog, steps: int) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every or entry.step == steps:
            self.last = now
            console.print(
                f"step {entry.step}/{steps} loss {entry.loss:.4f} lr {entry.lr:.2e} "
                f"{entry.seconds:.0f} s",
                highlight=False,
            )


def _plan_line(plan: Plan) -> str:
    per_step = plan.seconds_per_step
    each = f"{per_step:.2g}" if per_step < 10 else f"{per_step:.0f}"
    return (
        f"{plan.steps} steps on {plan.device} at ~{each} s a step: about {_about(plan.seconds)}; "
        "--steps N to change"
    )


def _about(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _print(result: FinetuneResult) -> None:
    table = Table(title="prelabel train", show_header=False, title_justify="left")
    table.add_row("checkpoint", escape(result.out))
    table.add_row("model version", result.meta.model_version)
    table.add_row("images", f"{result.train_images} training, {result.val_images} validation")
    table.add_row("steps", f"{result.meta.provenance.get('steps')} in {result.seconds:.1f} s")
    table.add_row(
        "validation mIoU", f"{percent(result.val_miou_before)} -> {percent(result.val_miou_after)}"
    )
    table.add_row("classes", escape(result.classes))
    if result.unlabeled:
        table.add_row("without labels", f"{len(result.unlabeled)} images (left out)")
    console.print(table)
    for key, reason in result.failed:
        console.print(f"  not used: {key}: {reason}", highlight=False, markup=False, soft_wrap=True)
