"""``prelabel``: the command line, a thin layer over the flows.

Exit codes: 0 every image labeled, 3 some images failed (listed), 2 the run could not start.
A user's mistake gets one line naming what is wrong, never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import yaml
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from deeplab.errors import CheckpointError
from flows.cli.common import (
    EXIT_SOME_FAILED,
    cannot_start,
    console,
    describe,
    flags_given,
    stopped,
)
from flows.cli.models import fetch_with_bar
from flows.interrupt import Interrupted, interruptible
from flows.local_server import ServerError, drain_to_server, temporary_server
from flows.logs import log_file, send_logs_to
from pipeline.config import ENV_PREFIX, RunConfig, undecodable_variable
from pipeline.errors import PrelabelError
from pipeline.formats import (
    EXPORTERS,
    ExportError,
    check_formats,
)
from pipeline.geometry.policy import RegionPolicy
from pipeline.labeling import progress
from pipeline.labeling.annotate import (
    RunSummary,
    check_labels,
    check_source,
    finish_if_done,
    preflight,
    run_lease,
)
from pipeline.retry import retrying
from pipeline.storage import storage_for

_FORMATS = ", ".join(EXPORTERS)


def _default(field: str, model: type[BaseModel] = RunConfig) -> str:
    """A setting's default as help shows it, read from the config so the two cannot differ;
    a PRELABEL_* variable set in the environment overrides it."""
    value = model.model_fields[field].default
    return ",".join(value) if isinstance(value, tuple) else str(value)


app = typer.Typer()


@app.command()
def annotate(
    source: Annotated[
        str,
        typer.Argument(help="An image file, a folder or s3://bucket/prefix of images (recursive)."),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder to write.")],
    model: Annotated[
        str | None,
        typer.Option(
            show_default=_default("model"),
            help="'demo' (bundled), a name from 'prelabel models' or a checkpoint file.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(show_default="2 on a CPU, 8 on a GPU", help="Images per forward pass."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(show_default=_default("device"), help="auto, cpu, cuda or cuda:N.")
    ] = None,
    max_side: Annotated[
        int | None,
        typer.Option(
            show_default=_default("max_side"),
            help="Longer side the model sees; larger images are downscaled.",
        ),
    ] = None,
    shard_size: Annotated[
        int | None,
        typer.Option(show_default=_default("shard_size"), help="Images per shard (task)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(show_default="cores, up to 8", help="Read/decode threads.")
    ] = None,
    export: Annotated[
        list[str] | None,
        typer.Option(
            "--export",
            show_default=_default("exports"),
            help=f"Formats to write at the end (repeat): {_FORMATS}.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Re-label images the run folder already holds.")
    ] = False,
    instances: Annotated[
        str | None,
        typer.Option(
            show_default=_default("instances", RegionPolicy),
            help="components (a region per connected part) or semantic (per class).",
        ),
    ] = None,
    min_area: Annotated[
        int | None,
        typer.Option(
            show_default=_default("min_area", RegionPolicy),
            help="Drop parts smaller than this many pixels.",
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="local (shards in this process) or deployment (shard runs on a work pool)."
        ),
    ] = "local",
    precision: Annotated[
        str | None,
        typer.Option(
            show_default=_default("precision"), help="auto, float32, bfloat16 or float16 (CUDA)."
        ),
    ] = None,
    compile_model: Annotated[
        bool, typer.Option("--compile", help="torch.compile the model (pays a compile).")
    ] = False,
    engine: Annotated[
        str | None,
        typer.Option(
            show_default=_default("engine"),
            help="auto, torch or openvino (CPU); auto times both once per model.",
        ),
    ] = None,
    output_stride: Annotated[
        int | None,
        typer.Option(
            show_default="as trained",
            help="8, 16 or 32: run the model at this stride.",
        ),
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(
            metavar="NAME,NAME",
            show_default="every class of the model",
            help="Keep these classes (after --class-map); the rest join the background.",
        ),
    ] = None,
    class_map: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            show_default="none",
            help="YAML or JSON of model class -> run class, to rename and merge (dog: animal).",
        ),
    ] = None,
    large_images: Annotated[
        str | None,
        typer.Option(
            show_default=_default("large_images"),
            help="Over --max-side: downscale, or tile at full resolution.",
        ),
    ] = None,
    tile_size: Annotated[
        int | None,
        typer.Option(show_default=_default("tile_size"), help="Tile side for --large-images tile."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Prefect's and every library's logs.")
    ] = False,
) -> None:
    """Label every image under SOURCE not yet labeled in --out; write records and exports.

    Re-running on the same --out labels only new and changed images.
    """
    flags: dict[str, Any] = {
        "model": model,
        "batch_size": batch_size,
        "device": device,
        "max_side": max_side,
        "shard_size": shard_size,
        "workers": workers,
        "exports": tuple(export) if export else None,
        "force": force or None,
        "precision": precision,
        "compile": compile_model or None,
        "engine": engine,
        "output_stride": output_stride,
        "large_images": large_images,
        "tile_size": tile_size,
        "classes": classes,
        "class_map": _class_map(class_map) if class_map is not None else None,
    }
    policy = {"instances": instances, "min_area": min_area}
    if any(v is not None for v in policy.values()):
        flags["regions"] = {k: v for k, v in policy.items() if v is not None}
    config = _checked_config(source, out, flags)
    fetch_with_bar(config)
    summary = _run(config, _executor(executor), verbose=verbose)
    _print_summary(summary)
    if summary.failed:
        raise typer.Exit(EXIT_SOME_FAILED)


@app.command("deploy")
def deploy_command(
    name: Annotated[str, typer.Argument(help="Deployment name: annotate/NAME.")],
    source: Annotated[str, typer.Option(help="Folder or bucket prefix of images.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder every run adds to.")],
    pool: Annotated[str, typer.Option(help="Work pool whose workers run it.")],
    cron: Annotated[str | None, typer.Option(help='Schedule, e.g. "0 2 * * *".')] = None,
    model: Annotated[
        str | None, typer.Option(help="'demo', a name from 'prelabel models' or a checkpoint file.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
    executor: Annotated[
        str, typer.Option(help="local (shards in the flow run) or deployment (on the pool).")
    ] = "local",
) -> None:
    """Create or update a scheduled annotate job on a Prefect work pool.

    Settings not given here come from PRELABEL_* in this environment and are stored in the
    deployment. Each scheduled run labels only the images added or changed since the last.
    """
    config = _checked_config(source, out, {"model": model, "device": device})
    preflight(config)
    _prefect_defaults()
    from flows.deploy import deploy

    deployment_id = deploy(name, config, pool=pool, cron=cron, executor=_executor(executor))
    console.print(
        f"deployment annotate/{name} ({deployment_id}) on pool {pool}"
        + (f", schedule {cron}" if cron else ""),
        highlight=False,
        markup=False,
    )


@app.command("serve")
def serve_command(
    name: Annotated[str, typer.Argument(help="Deployment name: annotate/NAME.")],
    source: Annotated[str, typer.Option(help="Folder or bucket prefix of images.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder every run adds to.")],
    cron: Annotated[str | None, typer.Option(help='Schedule, e.g. "0 2 * * *".')] = None,
    model: Annotated[
        str | None, typer.Option(help="'demo', a name from 'prelabel models' or a checkpoint file.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
) -> None:
    """Serve a scheduled annotate job (and the shard deployment) from this host, without a
    work pool, until stopped with Ctrl-C."""
    config = _checked_config(source, out, {"model": model, "device": device})
    preflight(config)
    _prefect_defaults()
    from flows.deploy import serve_here

    serve_here(name, config, cron=cron, executor="local")


def _class_map(path: Path) -> dict[str, str]:
    """A --class-map file: a YAML or JSON mapping of class names to class names."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        cannot_start(f"--class-map {path}: cannot read it ({exc})")
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
    ):
        cannot_start(f"--class-map {path}: must map class names to class names, e.g. dog: animal")
    return loaded


def _checked_config(source: str, out: str, flags: dict[str, Any]) -> RunConfig:
    """The run's config, checked as far as possible before anything starts; exit 2 if not.

    ``flags``: field -> value of the flags given (None: not given), so that a mistake is
    named by the flag or ``PRELABEL_*`` variable the user typed.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        config = RunConfig(source=source, out=out, **given)
    except ValidationError as exc:
        named = flags_given(given)
        cannot_start("; ".join(describe(e, named, ENV_PREFIX) for e in exc.errors()))
    except SettingsError as exc:  # a variable that is not the JSON its field needs
        cannot_start(undecodable_variable(exc))
    try:
        check_formats(config.exports)
    except ExportError as exc:
        cannot_start(str(exc))
    return config


def _executor(name: str) -> Literal["local", "deployment"]:
    if name not in ("local", "deployment"):
        cannot_start(f"executor: {name!r} is not 'local' or 'deployment'")
    return "local" if name == "local" else "deployment"


def _prefect_defaults() -> None:
    """Prefect reads its settings when first imported. These defaults suit a local run and can
    be overridden from the environment: no usage data sent from the user's machine, and time
    for a slow first server start."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _run(
    config: RunConfig, executor: Literal["local", "deployment"], *, verbose: bool
) -> RunSummary:
    """The annotate flow under the run folder's lease, taken before anything slow starts, so
    a second run on the same --out is refused at once, whatever its settings. Any refusal or
    failure ends in one line (exit 2), Ctrl-C or SIGTERM in one line (exit 130 or 143), and
    the full story is in the log file."""
    listener: _BarListener | _LogListener = (
        _BarListener() if console.is_terminal else _LogListener()
    )
    log = log_file("annotate")
    started = False  # the flow is running: a failure is a stop, not a refusal to start
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(interruptible())
            send_logs_to(log, console, verbose=verbose)
            retrying(lambda: check_source(config))
            lease = retrying(lambda: stack.enter_context(run_lease(config)))
            retrying(lambda: check_labels(config))
            # Nothing to label: finish here, with no server to start (work-pool runs still
            # make their flow run, where the pool's users look for it).
            done = finish_if_done(config, lease.token) if executor == "local" else None
            if done is not None:
                return done
            _prefect_defaults()
            startup = float(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])
            stack.enter_context(temporary_server(log, startup_seconds=startup))
            from flows.annotate import annotate_flow

            stack.callback(drain_to_server)

            send_logs_to(log, console, verbose=verbose)  # again: importing Prefect reset them
            stack.enter_context(listener)
            stack.enter_context(progress.listening(listener))
            started = True
            return annotate_flow(config, executor=executor)
    except Interrupted as stop:
        console.print(
            f"interrupted: {listener.saved} images labeled and saved, rerun to resume",
            highlight=False,
            markup=False,
        )
        # A read stuck in the kernel can still hold the exit: the handler's timer ends it.
        raise typer.Exit(stop.exit_code) from None
    except (PrelabelError, CheckpointError, ServerError) as exc:
        logged = log.exists() and log.stat().st_size > 0  # refused before anything ran: none
        reason = f"{exc} (log: {log})" if logged else str(exc)
        if started:
            stopped(reason)
        cannot_start(reason)
    except Exception as exc:  # a defect, not the user's doing: the traceback goes to the log
        with log.open("a", encoding="utf-8") as file:
            traceback.print_exc(file=file)
        console.print(
            f"[bold red]prelabel: failed:[/] {type(exc).__name__}: {exc} (traceback: {log})",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


class _BarListener:
    """A rich progress bar with images/s and ETA, for terminals."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]labeling"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self.task = self.bar.add_task("labeling", total=None, rate="-", failed=0, start=False)
        self.start = time.perf_counter()
        self.failed = self.saved = 0

    def __enter__(self) -> _BarListener:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def started(self, total_images: int) -> None:
        self.start = time.perf_counter()
        self.bar.reset(self.task, total=total_images, start=False)
        self.bar.start_task(self.task)

    def shard_saved(self, images: int) -> None:
        self.saved += images

    def advanced(self, images: int, failed: int) -> None:
        self.failed += failed
        done = self.bar.tasks[0].completed + images
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        self.bar.update(self.task, advance=images, rate=f"{rate:.1f}", failed=self.failed)


class _LogListener:
    """Plain lines for logs and pipes: at most one every few seconds, plus the last."""

    def __init__(self, every_seconds: float = 5.0) -> None:
        self.every = every_seconds
        self.total = self.done = self.failed = self.saved = 0
        self.start = self.last = time.perf_counter()

    def __enter__(self) -> _LogListener:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def started(self, total_images: int) -> None:
        self.total, self.done = total_images, 0
        self.start = self.last = time.perf_counter()
        print(f"labeling {total_images} images", file=sys.stderr, flush=True)

    def shard_saved(self, images: int) -> None:
        self.saved += images

    def advanced(self, images: int, failed: int) -> None:
        self.done += images
        self.failed += failed
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            print(
                f"labeled {self.done}/{self.total} images ({rate:.2f} img/s, {self.failed} failed)",
                file=sys.stderr,
                flush=True,
            )


def _print_summary(summary: RunSummary) -> None:
    table = Table(title="prelabel annotate", show_header=False, title_justify="left")
    table.add_row("images labeled", f"{summary.labeled}/{summary.images}")
    table.add_row(
        "this pass", f"{summary.labeled_now} processed, {summary.done_before} already done"
    )
    if summary.skipped:
        table.add_row("files skipped", f"{summary.skipped} (not images by extension)")
    table.add_row("regions", str(summary.regions))
    for name, count in summary.class_counts.items():
        table.add_row(f"  {name}", str(count))
    table.add_row("time", f"{summary.seconds:.1f} s ({summary.images_per_second:.2f} img/s)")
    table.add_row("engine", summary.engine or "none: nothing to label")
    table.add_row("run folder", summary.out)
    for damage in summary.repaired:
        table.add_row("repaired", f"{damage}: moved to quarantine/, its images labeled again")
    for uri in summary.exports:
        table.add_row("export", uri)
    console.print(table)
    for note in summary.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if summary.failed:
        console.print(
            f"[bold yellow]{len(summary.failed)} images failed[/] "
            f"(table: {storage_for(summary.out).join(summary.out, 'images')}):"
        )
        for _, reason in summary.failed:
            console.print(f"  {reason}", highlight=False, markup=False, soft_wrap=True)
