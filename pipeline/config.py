"""Run configuration: one validated model at the boundary, from flags, ``PRELABEL_*`` or code.

A typo in a field name fails by name (``extra="forbid"``, and a ``PRELABEL_*`` variable that names
no setting) instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from pipeline.geometry.policy import RegionPolicy
from pipeline.labeling.zoo import is_named
from pipeline.limits import MAX_PIXELS
from pipeline.run.view import ExportOptions
from pipeline.storage import absolute
from pipeline.storage.s3_settings import S3Settings

ENV_PREFIX, ENV_NESTED = "PRELABEL_", "__"
# The devices deeplab.predictor.resolve_device is meant for (the --device help, README); "auto"
# picks one.
_DEVICE = re.compile(r"auto|cpu|cuda(:(0|[1-9][0-9]*))?")


def default_cache_dir() -> Path:
    """``PRELABEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/prelabel`` (``~/.cache/prelabel``)."""
    if os.environ.get("PRELABEL_CACHE_DIR"):
        return Path(os.environ["PRELABEL_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prelabel"


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


class RunConfig(BaseSettings):
    """Everything that decides what an annotate run reads, computes and writes.

    Environment variables ``PRELABEL_<FIELD>`` (``PRELABEL_REGIONS__MIN_AREA`` for nested
    fields) fill what the caller leaves out.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, frozen=True, extra="forbid"
    )

    source: str  # a folder or an s3://bucket/prefix of images
    out: str  # the run folder: a local folder or an s3://bucket/prefix
    model: str = "demo"  # "demo" (bundled) or a checkpoint path: prelabel, torchvision or VainF
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Images per forward pass; None: 2 on a CPU (larger batches measured slower per image
    # there), 8 on a GPU.
    batch_size: int | None = Field(None, ge=1, le=1024)
    max_side: int = Field(1024, ge=16)  # longer image side seen by the model; never upscaled
    # Larger images are refused from their header, before decoding. The default is Pillow's
    # decompression-bomb threshold, which also caps it (see pipeline.labeling.decode).
    max_pixels: int = Field(MAX_PIXELS, ge=1)
    shard_size: int = Field(256, ge=1)  # images per shard: the unit of work, retry and resume
    # Executor "deployment": shards smaller than this share a flow run, each of which costs a
    # fresh process on a worker (Python, torch, the model: seconds), in runs of at least this
    # many images; a shard this large or larger is a run of its own.
    run_images: int = Field(256, ge=1)
    workers: int = Field(default_factory=_default_workers, ge=1)  # read + decode threads
    # Seconds one image's read may take before it is recorded as failed (retryable) and the
    # shard goes on: a hung mount or a file that never ends must not hold the run.
    read_timeout: float = Field(300.0, gt=0)
    # Seconds without a heartbeat after which another run may take over the run folder's lease
    # (a run on the same host whose process is gone is taken over at once).
    lease_timeout: float = Field(60.0, gt=0)
    # Processes that trace regions (pipeline.labeling.tracing); None: one per core (one fewer on a
    # GPU); 0: one thread in this process.
    post_workers: int | None = Field(None, ge=0, le=256)
    low_confidence: float = Field(0.5, gt=0, lt=1)  # max-softmax below this counts as doubtful
    # Images over max_side: "downscale" to it, or "tile": full resolution in overlapping
    # tile_size windows (slower, finer boundaries; memory follows the width).
    large_images: Literal["downscale", "tile"] = "downscale"
    tile_size: int = Field(1024, ge=64)
    tile_overlap: int = Field(256, ge=0)
    # auto: bfloat16 autocast on CUDA, float32 on the CPU. See README for the trade-offs.
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    compile: bool = False  # torch.compile the model: pays a compile per input size
    # What runs the forward: torch, or openvino (CPU only). auto: torch on CUDA; on a CPU the
    # faster of the two, timed on this machine once per model and kept in cache_dir.
    engine: Literal["auto", "torch", "openvino"] = "auto"
    # Converted models and engine timings, kept between runs; None: the user cache folder of
    # the machine that runs the shard (a deployment's workers have their own).
    cache_dir: Path | None = None
    # Where named models (``prelabel models``) download from instead of their publishers'
    # URL: a mirror holding the same files. None: the publisher.
    model_mirror: str | None = None
    # Run the checkpoint's weights at this output stride (None: the one it was trained at).
    # 8 is a finer map for 2.6x the multiply-adds of 16 (ResNet-50); README has the figures.
    output_stride: Literal[8, 16, 32] | None = None
    regions: RegionPolicy = RegionPolicy()
    # Formats written when the run ends; from the environment as PRELABEL_EXPORTS=coco,masks.
    exports: Annotated[tuple[str, ...], NoDecode] = ("coco",)
    # The run's classes (pipeline.labeling.classes): class_map renames and merges the
    # model's (model name -> run name), then classes keeps these run names; the rest join
    # the background. None: the model's classes as they are.
    classes: Annotated[tuple[str, ...] | None, NoDecode] = None
    class_map: dict[str, str] | None = None
    export_options: ExportOptions = ExportOptions()
    force: bool = False  # re-label every image, even those the run folder already holds
    s3: S3Settings = S3Settings()  # how to reach S3; credentials only from boto3's chain

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, data: Any) -> Any:
        """pydantic-settings skips a ``PRELABEL_*`` variable that names no field, so a typo'd
        one would run with the default unnoticed: refuse it by name."""
        unknown: dict[tuple[str, ...], tuple[type[BaseModel], list[str]]] = {}
        for name in sorted(os.environ):
            if name.upper().startswith(ENV_PREFIX) and (missed := _unknown(name)) is not None:
                level, model = missed
                unknown.setdefault(level, (model, []))[1].append(name)
        if unknown:
            raise ValueError(
                "; ".join(
                    f"{', '.join(names)}: no such setting; settings "
                    + (f"under {_variable(level)}{ENV_NESTED} " if level else "")
                    + f"are {_variables(model, level)}"
                    for level, (model, names) in unknown.items()
                )
            )
        return data

    @model_validator(mode="after")
    def _tiles_overlap_less_than_a_tile(self) -> RunConfig:
        """Worded with the field names as words and listed in ``fields``, so that a command
        line can name each as its user set it (flows.cli.common.describe)."""
        if self.tile_overlap >= self.tile_size:
            raise PydanticCustomError(
                "tile_overlap_not_under_tile_size",
                "tile_size {tile_size} must be larger than the tile overlap "
                "({tile_overlap}, tile_overlap)",
                {
                    "tile_size": self.tile_size,
                    "tile_overlap": self.tile_overlap,
                    "fields": ("tile_size", "tile_overlap"),
                },
            )
        return self

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        """Checked here, where a mistake is one line, not when the model loads."""
        if not _DEVICE.fullmatch(value):
            raise ValueError("choose auto, cpu, cuda or cuda:N (N a GPU index)")
        return value

    @field_validator("exports", "classes", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """``coco,masks`` from the environment; a JSON list (``["coco"]``) is taken too."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("not a JSON list; name formats as coco,masks") from None
        return tuple(part.strip() for part in value.split(",") if part.strip())

    @field_validator("source", "out", "model")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if value == "demo" or is_named(value) else absolute(value)

    @property
    def labeling_hash(self) -> str:
        """Hash of the settings that change labels for the same model and image: a run folder
        holds labels from one of these, so reruns never mix two."""
        decisive = self.model_dump(
            mode="json",
            include={
                "max_side",
                "max_pixels",
                "low_confidence",
                "regions",
                "large_images",
                "tile_size",
                "tile_overlap",
                "precision",
                "classes",
                "class_map",
            },
        )
        # Unset class settings stay out, so runs made before they existed keep their hash.
        decisive = {k: v for k, v in decisive.items() if v is not None}
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def _nested(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    """The model whose fields a field's own variables (``<FIELD>__<NAME>``) set, if any."""
    annotation = model.model_fields[field].annotation
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _variable(path: tuple[str, ...]) -> str:
    return ENV_PREFIX + ENV_NESTED.join(path).upper()


def _variables(model: type[BaseModel], level: tuple[str, ...]) -> str:
    """The variables that set ``model``'s fields, it being RunConfig's nested ``level``; a
    model nested in it shows as ``PRELABEL_REGIONS__*``."""
    return ", ".join(
        _variable((*level, field)) + (f"{ENV_NESTED}*" if _nested(model, field) else "")
        for field in model.model_fields
    )


def _unknown(name: str) -> tuple[tuple[str, ...], type[BaseModel]] | None:
    """For a ``PRELABEL_*`` variable that names no setting, the model (and its path) whose
    fields it misses; None when it names one."""
    model: type[BaseModel] = RunConfig
    level: tuple[str, ...] = ()
    parts = name[len(ENV_PREFIX) :].lower().split(ENV_NESTED)
    for i, part in enumerate(parts):
        if part not in model.model_fields:
            return level, model
        nested = _nested(model, part)
        if nested is None:  # a value: the name must end with it
            return None if i == len(parts) - 1 else (level, model)
        model, level = nested, (*level, part)
    return None  # a whole nested model, as JSON


def undecodable_variable(error: SettingsError) -> str:
    """One line for the variable pydantic-settings could not decode as JSON, naming it, its
    value and the one-field-at-a-time variables that need no JSON."""
    found = re.search(r'field "([^"]+)"', str(error))
    field = found[1] if found else ""
    if field not in RunConfig.model_fields or (nested := _nested(RunConfig, field)) is None:
        return str(error)  # the nested models are the only fields decoded from JSON
    name = next((n for n in os.environ if n.upper() == _variable((field,))), _variable((field,)))
    # A JSON object may hold an endpoint URL with a user:password in it; mask it as S3Settings
    # does, so that no terminal shows the secret.
    value = re.sub(r"//[^/@\s]*@", "//***@", os.environ.get(name, ""))
    one_by_one = _variables(nested, (field,))
    return f"{name}={value!r}: not a JSON object; set one field at a time instead: {one_by_one}"
