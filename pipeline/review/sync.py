"""Push a run's pre-labels to a Label Studio project; pull reviewed annotations back as masks.

Tasks are matched by ``data.prelabel_image_id``, so pushing the same run twice adds nothing,
and a newer run changes only what differs. A task someone has annotated (or started to: a
draft) is the reviewer's: a push leaves it alone and counts it as skipped.

Each pushed task also carries ``meta.prelabel``: the image's size and the run's class names
and background. Pull needs them and the project has nowhere else to keep them: the labeling
config lists no background class, and an annotation with no results has no size.

Pull writes the masks export's layout (``SegmentationClass/*.png``, ``labelmap.txt``,
``ImageSets/Segmentation/default.txt``, ``index.csv``), with the masks named as that export
names them, for the reviewed tasks only. Results are painted in order, later over earlier;
polygons in percent become pixel-corner coordinates and are filled as pycocotools fills them,
brush masks are decoded from Label Studio's RLE.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict

from pipeline.errors import PrelabelError
from pipeline.formats.label_studio import decode_brush_rle, label_config, label_studio_tasks
from pipeline.formats.masks import mask_names, write_mask_folder
from pipeline.geometry.polygons import rasterize_polygons
from pipeline.review.label_studio_api import LabelStudio
from pipeline.run.view import ExportOptions, RunView
from pipeline.storage import NotFoundError, storage_for

__all__ = [
    "PullSummary",
    "PushRecord",
    "PushSummary",
    "ReviewSyncError",
    "pull",
    "push",
    "push_record",
]

META = "prelabel"  # the key of prelabel's part of a task's meta
_PREDICTION_FIELDS = ("model_version", "score", "result")
_OPAQUE = 128  # brush alpha from here up is inside the mask: the canvas antialiases edges


class ReviewSyncError(PrelabelError):
    """A project or an annotation that push or pull cannot use; one line why."""


@dataclass(frozen=True, slots=True)
class PushSummary:
    project_id: int
    created: int  # new tasks
    updated: int  # unreviewed tasks given the new prediction (and data)
    unchanged: int  # already exactly as this run has them
    skipped: int  # different, but annotated or drafted: left to the reviewer


class PushRecord(BaseModel):
    """Where a run's images went, kept in the run folder (``review/label-studio.json``) so
    the review report can open each image's task."""

    model_config = ConfigDict(frozen=True)

    url: str  # Label Studio's address, as given
    project: str
    project_id: int
    tasks: dict[str, int]  # image id -> task id

    def task_url(self, image_id: str) -> str | None:
        task = self.tasks.get(image_id)
        if task is None or not self.url.startswith(("http://", "https://")):
            return None  # a link the page would open must be a web address
        return f"{self.url.rstrip('/')}/projects/{self.project_id}/data?task={task}"


def push_record(view: RunView) -> PushRecord | None:
    """The run's last push, if it was pushed."""
    try:
        return PushRecord.model_validate_json(view.layout.storage.read(view.layout.pushed))
    except NotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class PullSummary:
    project_id: int
    written: tuple[str, ...]  # the folder's index files (index.csv names every mask)
    masks: int  # reviewed tasks, one mask each
    unannotated: int  # prelabel's tasks with no annotation but cancelled ones
    foreign: int  # tasks prelabel did not push, left out


def push(client: LabelStudio, view: RunView, title: str, options: ExportOptions) -> PushSummary:
    """Find or create the project titled ``title`` and bring its tasks to this run's."""
    project = client.find_project(title) or client.create_project(
        title, label_config(view.class_names, view.background)
    )
    project_id = int(project["id"])
    existing = _by_image(client.tasks(project_id))
    sizes = {row["image_id"]: (row["width"], row["height"]) for row in view.ok_images()}
    new: list[dict[str, Any]] = []
    outcomes: Counter[str] = Counter()
    for built in label_studio_tasks(view, options):
        image_id = built["data"]["prelabel_image_id"]
        width, height = sizes[image_id]
        meta = {
            META: {
                "width": width,
                "height": height,
                "class_names": list(view.class_names),
                "background": view.background,
            }
        }
        if image_id in existing:
            outcomes[_bring_up_to_date(client, existing[image_id], built, meta)] += 1
        else:
            new.append({**built, "meta": meta})
    imported = client.import_tasks(project_id, new) if new else 0
    if imported != len(new):
        raise ReviewSyncError(
            f"{client.url}: project {title!r} took {imported} of {len(new)} new tasks"
        )
    # The import answers with counts only: the new tasks' ids come from a listing.
    ids = {**existing, **_by_image(client.tasks(project_id))} if new else existing
    record = PushRecord(
        url=client.url,
        project=title,
        project_id=project_id,
        tasks={image_id: int(ids[image_id]["id"]) for image_id in sizes if image_id in ids},
    )
    view.layout.storage.write_atomic(view.layout.pushed, record.model_dump_json(indent=1).encode())
    return PushSummary(
        project_id, len(new), outcomes["updated"], outcomes["unchanged"], outcomes["skipped"]
    )


def _by_image(tasks: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Tasks by the image id prelabel gave them; the first of any duplicates."""
    found: dict[str, Mapping[str, Any]] = {}
    for task in tasks:
        image_id = task["data"].get("prelabel_image_id")
        if isinstance(image_id, str):
            found.setdefault(image_id, task)
    return found


def pull(client: LabelStudio, title: str, out: str) -> PullSummary:
    """Write the reviewed tasks of project ``title`` under ``out`` as class masks."""
    project = client.find_project(title)
    if project is None:
        raise ReviewSyncError(f"{client.url}: no project titled {title!r}")
    project_id = int(project["id"])
    tasks = client.tasks(project_id)
    ours: dict[str, dict[str, Any]] = {}
    for task in tasks:
        image_id = task["data"].get("prelabel_image_id")
        if isinstance(image_id, str) and META in (task.get("meta") or {}):
            ours.setdefault(image_id, task)
    if not ours:
        raise ReviewSyncError(f"{client.url}: project {title!r} has no tasks pushed by prelabel")
    names, background = _classes(ours.values(), title)
    images = sorted(
        (
            {"image_id": image_id, "key": str(task["data"]["key"])}
            for image_id, task in ours.items()
        ),
        key=lambda image: image["key"],
    )
    reviewed: dict[str, tuple[dict[str, Any], Any, str]] = {}  # image id -> size, shapes, where
    for image in images:
        task = ours[image["image_id"]]
        annotation = _latest_annotation(task)
        if annotation is not None:
            where = f"task {task['id']} ({image['key']})"
            size = task["meta"][META]
            shapes = _shapes(annotation["result"], names, size["width"], size["height"], where)
            reviewed[image["image_id"]] = (size, shapes, where)

    def painted() -> Iterator[tuple[dict[str, Any], npt.NDArray[np.uint8]]]:
        for image in images:
            if image["image_id"] in reviewed:
                size, shapes, where = reviewed[image["image_id"]]
                yield image, _paint(shapes, size["height"], size["width"], background, where)

    # Named over every pushed image, as the export names them.
    written = write_mask_folder(
        storage_for(out), out, names, background, mask_names(images), painted()
    )
    return PullSummary(
        project_id, written, len(reviewed), len(ours) - len(reviewed), len(tasks) - len(ours)
    )


def _bring_up_to_date(
    client: LabelStudio, task: Mapping[str, Any], built: Mapping[str, Any], meta: dict[str, Any]
) -> str:
    """Make an existing task what this run built, unless a reviewer has it: its outcome."""
    (prediction,) = built["predictions"]
    fields = {"data": built["data"], "meta": meta}
    same_fields = all(task.get(name) == value for name, value in fields.items())
    predictions = task.get("predictions") or []
    same_prediction = [_prediction(p) for p in predictions] == [prediction]
    if same_fields and same_prediction:
        return "unchanged"
    if _reviewed(task):
        return "skipped"
    if not same_fields:
        client.update_task(task["id"], fields)
    if not same_prediction:
        for old in predictions:
            client.delete_prediction(old["id"])
        client.create_prediction(task["id"], prediction)
    return "updated"


def _prediction(prediction: Mapping[str, Any]) -> dict[str, Any]:
    return {name: prediction.get(name) for name in _PREDICTION_FIELDS}


def _reviewed(task: Mapping[str, Any]) -> bool:
    return bool(
        task.get("annotations")
        or task.get("drafts")
        or task.get("total_annotations")
        or task.get("cancelled_annotations")
    )


# --- pull ------------------------------------------------------------------------------------


def _classes(tasks: Any, title: str) -> tuple[list[str], int | None]:
    """The class names and background the tasks were pushed with; all must agree."""
    settings = {
        (tuple(task["meta"][META]["class_names"]), task["meta"][META]["background"])
        for task in tasks
    }
    if len(settings) > 1:
        raise ReviewSyncError(
            f"project {title!r} holds tasks pushed with different class lists: "
            + "; ".join(str(list(names)) for names, _ in sorted(settings, key=str))
        )
    ((names, background),) = settings
    return list(names), background


def _latest_annotation(task: Mapping[str, Any]) -> dict[str, Any] | None:
    """The annotation that stands for the task: ground truth first, then the latest; skipped
    (cancelled) annotations are no review."""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if not done:
        return None
    latest: dict[str, Any] = max(
        done, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at")), a["id"])
    )
    return latest


Shape = tuple[int, str, Any]  # class id, "polygon" or "brush", pixel ring or RLE


def _shapes(
    results: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    width: int,
    height: int,
    where: str,
) -> list[Shape]:
    """Results checked and turned into paintable shapes, before any mask is written."""
    class_id = {name: index for index, name in enumerate(class_names)}
    shapes: list[Shape] = []
    for result in results:
        kind, value = result.get("type"), result.get("value") or {}
        if kind not in ("polygonlabels", "brushlabels"):
            raise ReviewSyncError(f"{where}: a {kind!r} result cannot be drawn in a class mask")
        labels = value.get(kind) or []
        if len(labels) != 1 or labels[0] not in class_id:
            raise ReviewSyncError(
                f"{where}: result labels {labels} are not one of the run's classes"
            )
        if kind == "polygonlabels":
            points = np.asarray(value.get("points") or [], np.float64)
            if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
                raise ReviewSyncError(f"{where}: a polygon needs 3 or more [x, y] points")
            ring = (points * (width, height) / 100).ravel()
            shapes.append((class_id[labels[0]], "polygon", tuple(ring.tolist())))
        else:
            size = (result.get("original_width"), result.get("original_height"))
            if value.get("format") != "rle" or size != (width, height):
                raise ReviewSyncError(
                    f"{where}: a brush mask must be RLE at the image's {width}x{height}, "
                    f"got {value.get('format')!r} at {size[0]}x{size[1]}"
                )
            shapes.append((class_id[labels[0]], "brush", value.get("rle") or []))
    return shapes


def _paint(
    shapes: Sequence[Shape], height: int, width: int, background: int | None, where: str
) -> npt.NDArray[np.uint8]:
    out = np.full((height, width), background or 0, np.uint8)
    for class_id, kind, payload in shapes:
        if kind == "polygon":
            mask = rasterize_polygons(((payload,),), (height, width))
        else:
            try:
                values = decode_brush_rle(payload)
            except ValueError as exc:
                raise ReviewSyncError(f"{where}: {exc}") from None
            if len(values) != height * width * 4:
                raise ReviewSyncError(
                    f"{where}: a brush mask holds {len(values)} values, not {width}x{height}x4"
                )
            mask = values.reshape(height, width, 4)[:, :, 3] >= _OPAQUE
        out[mask] = class_id
    return out
