"""How good a run's pre-labels were: its class maps against reviewed labels, per model version.

The prediction is the class map painted back from the run's regions (``class_map_of``), which is
what reviewers were shown, so the figures say how much reviewing the pre-labels saved. Each
evaluation is written as ``evaluations/<model_version>.json`` and ``.md`` in the run folder,
and every image's outcome as ``<model_version>.images.parquet`` beside them, written as the
images are scored: the JSON keeps counts, the first few failures and the most corrected
images, so memory does not grow with the run. ``evaluate_runs`` with several runs (one per
model, over the same images) writes every evaluation's JSON into every run folder, so each
folder's markdown shows the models side by side.
"""

from __future__ import annotations

import contextlib
import functools
import html
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, BinaryIO

import cv2
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from deeplab.metrics import IGNORE_INDEX, confusion_matrix, iou_per_class
from pipeline.errors import PrelabelError
from pipeline.geometry.class_maps import class_map_of
from pipeline.labeling.tracing import default_workers, tracer
from pipeline.quality.truth import Label, Truth, TruthError, check_names
from pipeline.run.view import RunView
from pipeline.storage import NotFoundError

EVALUATIONS = "evaluations"
_VERSION = re.compile(r"[A-Za-z0-9_.-]+")
_TOP_IMAGES = 20  # images listed in the markdown, most corrected first
_LISTED = 50  # failed images, and images without truth, named in the markdown
_IN_FLIGHT = 4  # images a scoring worker may have waiting


class EvaluationError(PrelabelError):
    """An evaluation that cannot be made (no image with truth, two runs of one model)."""


class ImageScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    pixels: int  # labeled truth pixels, the ones scored
    changed_share: float  # share of them the reviewer changed
    boundary_f1: float | None  # None: neither map has a boundary
    regions_added: int
    regions_removed: int


class Failure(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    reason: str


class Evaluation(BaseModel):
    """One run's figures against one truth; what the JSON file holds."""

    model_config = ConfigDict(frozen=True)

    model_version: str
    model_ref: str
    run: str
    truth: str
    truth_sha256: str  # evaluations compare side by side only against the same truth
    evaluated_at: datetime
    boundary_tolerance: int  # pixels
    class_names: tuple[str, ...]
    images: int  # scored
    pixels: int
    iou: dict[str, float | None]  # None: class absent from truth and prediction
    miou: float | None  # over classes present in truth or prediction
    pixel_accuracy: float | None
    boundary_precision: float | None
    boundary_recall: float | None
    boundary_f1: float | None
    changed_share: float | None  # 1 - pixel accuracy: what the reviewer repainted
    regions_added: int  # truth regions with no predicted region of their class overlapping
    regions_removed: int  # predicted regions with no truth region of their class overlapping
    confusion: list[list[int]]  # pixels; rows truth, columns prediction, in class id order
    failed: int  # images the run failed on, or whose truth could not be used
    missing: int  # run images the truth has no label for
    truth_unmatched: int  # truth labels no run image uses
    most_corrected: list[ImageScore]  # the images with the most pixels changed, most first
    failed_shown: list[Failure]  # the first failures, in key order
    missing_shown: list[str]  # the first images without truth, in key order
    truth_unmatched_shown: list[str]  # the first truth labels unused, in name order
    # Every image's outcome, relative to ``run``; None where it was not written.
    per_image: str | None

    @model_validator(mode="before")
    @classmethod
    def _lists_to_counts(cls, data: Any) -> Any:
        """An evaluation written before per-image outcomes had their own file held every
        score and failure in its lists: read as the counts and the first few."""
        if not isinstance(data, dict) or not isinstance(data.get("per_image"), list):
            return data
        data = dict(data)
        scores = [ImageScore.model_validate(s) for s in data["per_image"]]
        data["most_corrected"] = _ranked(scores)
        data["per_image"] = None
        for field in ("failed", "missing", "truth_unmatched"):
            listed = data[field]
            data[field], data[f"{field}_shown"] = len(listed), listed[:_LISTED]
        return data


def evaluate_runs(
    views: Sequence[RunView], truth: Truth, *, tolerance: int = 2
) -> list[Evaluation]:
    """Evaluate each run against ``truth`` and write every evaluation into every run folder;
    returns them in the order given. Each run's per-image outcomes are spooled to a temporary
    file and land in its folder only when every evaluation has succeeded."""
    versions = [view.model.model_version for view in views]
    if len(set(versions)) != len(versions):
        raise EvaluationError(
            f"runs to compare must come from different models; model {versions[0]} repeats "
            "(one run folder per model, over the same images)"
        )
    with contextlib.ExitStack() as spools:
        files = [spools.enter_context(tempfile.TemporaryFile()) for _ in views]
        evaluations = [
            evaluate_run(view, truth, tolerance=tolerance, outcomes=file)
            for view, file in zip(views, files, strict=True)
        ]
        for view, evaluation, file in zip(views, evaluations, files, strict=True):
            storage = view.layout.storage
            file.seek(0)
            uri = storage.join(
                view.layout.root, EVALUATIONS, _outcomes_name(evaluation.model_version)
            )
            with storage.write_stream(uri) as out:
                shutil.copyfileobj(file, out)
    for view in views:
        for evaluation in evaluations:
            _write(view, f"{evaluation.model_version}.json", evaluation.model_dump_json(indent=1))
        own = next(e for e in evaluations if e.model_version == view.model.model_version)
        _write(view, f"{own.model_version}.md", to_markdown(own, stored_evaluations(view)))
    return evaluations


def evaluate_run(
    view: RunView,
    truth: Truth,
    *,
    tolerance: int = 2,
    outcomes: BinaryIO | None = None,
    workers: int | None = None,
) -> Evaluation:
    """Figures over every ok image of the run that the truth labels. Every image's outcome
    is written to ``outcomes`` as Parquet (``OUTCOMES_SCHEMA``) as it is found, where given;
    nothing else is written.

    This process reads each truth label (and hashes it) and the run's regions; ``workers``
    processes (default: one per core; 0: a thread here) decode the labels and score them,
    about 17 ms of CPU for an image of 0.8 MP, so the cores share that work (10^4 images on
    2 cores: 142 s with a thread, 90 s with 2 workers)."""
    if tolerance < 0:
        raise EvaluationError(f"boundary tolerance must be >= 0 pixels, not {tolerance}")
    version = view.model.model_version
    if not _VERSION.fullmatch(version) or not version.strip("."):
        raise EvaluationError(f"{view.layout.root}: model version {version!r} is not a file name")
    names = view.class_names
    check_names(truth, names)
    confusion = np.zeros((len(names), len(names)), np.int64)
    boundary = np.zeros(4, np.int64)  # matched predicted, predicted, matched truth, truth
    found = _Outcomes(outcomes)
    workers = default_workers("cpu") if workers is None else workers
    pool = tracer(workers)
    # Outcomes wait in key order: a score to come, a reason the image failed, or None where
    # the truth has no label. A few images per worker are in flight.
    queue: deque[tuple[str, Future[_Scored | str] | str | None]] = deque()

    def settle() -> None:
        key, pending = queue.popleft()
        result = pending.result() if isinstance(pending, Future) else pending
        if result is None:
            found.missing(key)
        elif isinstance(result, str):
            found.failed(key, result)
        else:
            confusion[:] += result.confusion
            boundary[:] += result.boundary
            found.scored(result.score(key))

    for image, regions in _images_with_regions(view):
        key = image["key"]
        pending: Future[_Scored | str] | str | None = None
        if image["status"] != "ok":
            pending = f"the run failed: {image['error']}"
        elif truth.has(key):
            try:
                label = truth.fetch(key)
            except TruthError as exc:
                pending = str(exc)
            else:
                size = (image["height"], image["width"])
                pending = pool.submit(
                    score_image, label, regions, size, names, view.background, tolerance
                )
        queue.append((key, pending))
        while len(queue) > _IN_FLIGHT * max(1, workers):
            settle()
    while queue:
        settle()
    if not found.counts["scored"]:
        found.close()
        missing = found.counts["missing"]
        raise EvaluationError(
            f"no image of {view.layout.root} could be scored against {truth.source} "
            f"({missing} without truth, {found.counts['failed']} failed"
            + (f", e.g. {found.shown['missing'][0]!r}" if missing else "")
            + ")"
        )
    for name in truth.unmatched(_keys(view)):
        found.unmatched(name)
    found.close()
    iou = iou_per_class(confusion)
    total = int(confusion.sum())
    accuracy = float(np.trace(confusion) / total) if total else None
    return Evaluation(
        model_version=version,
        model_ref=view.model.ref,
        run=view.layout.root,
        truth=truth.source,
        truth_sha256=truth.sha256,
        evaluated_at=datetime.now(UTC),
        boundary_tolerance=tolerance,
        class_names=names,
        images=found.counts["scored"],
        pixels=total,
        iou={name: _finite(v) for name, v in zip(names, iou, strict=True)},
        miou=_finite(float(np.nanmean(iou))) if not np.isnan(iou).all() else None,
        pixel_accuracy=accuracy,
        boundary_precision=_ratio(boundary[0], boundary[1]),
        boundary_recall=_ratio(boundary[2], boundary[3]),
        boundary_f1=_f1(boundary),
        changed_share=None if accuracy is None else 1 - accuracy,
        regions_added=found.added,
        regions_removed=found.removed,
        confusion=confusion.tolist(),
        failed=found.counts["failed"],
        missing=found.counts["missing"],
        truth_unmatched=found.counts["truth only"],
        most_corrected=_ranked(found.top),
        failed_shown=[Failure(key=k, reason=r or "") for k, r in found.shown["failed"]],
        missing_shown=[k for k, _ in found.shown["missing"]],
        truth_unmatched_shown=[k for k, _ in found.shown["truth only"]],
        per_image=None if outcomes is None else f"{EVALUATIONS}/{_outcomes_name(version)}",
    )


@dataclass(frozen=True, slots=True)
class _Scored:
    confusion: npt.NDArray[np.int64]
    boundary: npt.NDArray[np.int64]  # boundary_counts
    added: int
    removed: int

    def score(self, key: str) -> ImageScore:
        pixels = int(self.confusion.sum())
        return ImageScore(
            key=key,
            pixels=pixels,
            changed_share=float(1 - np.trace(self.confusion) / pixels) if pixels else 0.0,
            boundary_f1=_f1(self.boundary),
            regions_added=self.added,
            regions_removed=self.removed,
        )


def score_image(
    label: Label,
    regions: list[dict[str, Any]],
    size: tuple[int, int],
    names: tuple[str, ...],
    background: int | None,
    tolerance: int,
) -> _Scored | str:
    """One image's figures against its truth label; what a worker runs. A label that cannot
    be used returns the reason instead."""
    height, width = size
    fill = background if background is not None else 0
    try:
        expected = label.decode(names, fill)
        if expected.shape != (height, width):
            raise TruthError(
                f"truth is {expected.shape[1]}x{expected.shape[0]}, the image {width}x{height}"
            )
    except TruthError as exc:
        return str(exc)
    predicted = class_map_of(regions, height, width, fill)
    confusion = confusion_matrix(expected, predicted, len(names))
    added, removed = region_changes(expected, predicted, background, confusion=confusion)
    return _Scored(confusion, boundary_counts(expected, predicted, tolerance), added, removed)


OUTCOMES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # the run's image key; for "truth only", the truth's label
        ("outcome", pa.string()),  # scored, failed, missing (no truth), truth only
        ("reason", pa.string()),  # why it failed
        ("pixels", pa.int64()),  # the rest: scored images only, as ImageScore
        ("changed_share", pa.float64()),
        ("boundary_f1", pa.float64()),
        ("regions_added", pa.int64()),
        ("regions_removed", pa.int64()),
    ]
)
_OUTCOME_ROWS = 8192  # rows to a row group of the outcomes file


class _Outcomes:
    """Every image's outcome, written a row group at a time; kept in memory are only the
    counts, the first few of each failure and the most corrected images. Scores kept whole
    took about 1.3 KB an image, over a GB at a million."""

    def __init__(self, sink: BinaryIO | None) -> None:
        self.writer = None if sink is None else pq.ParquetWriter(sink, OUTCOMES_SCHEMA)
        self.rows: list[dict[str, Any]] = []
        self.counts = dict.fromkeys(("scored", "failed", "missing", "truth only"), 0)
        self.shown: dict[str, list[tuple[str, str | None]]] = {k: [] for k in self.counts}
        self.top: list[ImageScore] = []
        self.added = self.removed = 0

    def scored(self, score: ImageScore) -> None:
        self.added += score.regions_added
        self.removed += score.regions_removed
        self.top.append(score)
        if len(self.top) >= 4 * _TOP_IMAGES:
            self.top = _ranked(self.top)
        self._row(score.key, "scored", None, score.model_dump(exclude={"key"}))

    def failed(self, key: str, reason: str) -> None:
        self._row(key, "failed", reason)

    def missing(self, key: str) -> None:
        self._row(key, "missing")

    def unmatched(self, name: str) -> None:
        self._row(name, "truth only")

    def _row(
        self,
        key: str,
        outcome: str,
        reason: str | None = None,
        figures: dict[str, Any] | None = None,
    ) -> None:
        self.counts[outcome] += 1
        if outcome != "scored" and len(self.shown[outcome]) < _LISTED:
            self.shown[outcome].append((key, reason))
        if self.writer is not None:
            self.rows.append({"key": key, "outcome": outcome, "reason": reason, **(figures or {})})
            if len(self.rows) == _OUTCOME_ROWS:
                self._flush()

    def _flush(self) -> None:
        if self.writer is not None and self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, OUTCOMES_SCHEMA))
        self.rows = []

    def close(self) -> None:
        self._flush()
        if self.writer is not None:
            self.writer.close()


def _ranked(scores: Sequence[ImageScore]) -> list[ImageScore]:
    """The most corrected first, ties by key: the images the markdown lists."""
    return sorted(scores, key=lambda s: (-s.changed_share, s.key))[:_TOP_IMAGES]


def _outcomes_name(version: str) -> str:
    return f"{version}.images.parquet"


def _keys(view: RunView) -> Iterator[str]:
    """Every image key of the run, in key order, read again from its index."""
    for batch in view.rows.batches(["key"]):
        yield from batch.column(0).to_pylist()


def _images_with_regions(
    view: RunView,
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each image row of the run in key order with its regions, read shard by shard."""
    for part in view.parts(regions=("image_id", "class_id", "rle")):
        regions = part.regions_of()
        for image in part.images.to_pylist():
            yield image, regions.get(image["image_id"], [])


def boundaries(
    labels: npt.NDArray[np.uint8], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Pixels with a 4-neighbour of another class, both labeled in the truth: unlabeled truth
    neither makes nor hides a boundary."""
    out = np.zeros(labels.shape, bool)
    across = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    out[:, 1:] |= across
    out[:, :-1] |= across
    down = (labels[1:] != labels[:-1]) & valid[1:] & valid[:-1]
    out[1:] |= down
    out[:-1] |= down
    return out


def boundary_counts(
    truth: npt.NDArray[np.uint8], predicted: npt.NDArray[np.uint8], tolerance: int
) -> npt.NDArray[np.int64]:
    """(predicted boundary pixels within ``tolerance`` px of a truth boundary, predicted
    boundary pixels, truth boundary pixels within tolerance of a predicted one, truth boundary
    pixels), by Euclidean distance."""
    valid = truth != IGNORE_INDEX
    edges_truth, edges_pred = boundaries(truth, valid), boundaries(predicted, valid)
    return np.array(
        [
            _within(edges_pred, edges_truth, tolerance),
            int(edges_pred.sum()),
            _within(edges_truth, edges_pred, tolerance),
            int(edges_truth.sum()),
        ],
        np.int64,
    )


def _within(points: npt.NDArray[np.bool_], targets: npt.NDArray[np.bool_], tolerance: int) -> int:
    """Points with a target at Euclidean distance <= ``tolerance``: the targets dilated by a
    disk of that radius, which is exact on the pixel grid and, for the few pixels a boundary
    tolerance spans, several times faster than a distance transform of the image."""
    if not points.any() or not targets.any():
        return 0
    near = cv2.dilate(targets.view(np.uint8), _disk(tolerance))
    return int(np.count_nonzero(near[points]))


@functools.cache
def _disk(radius: int) -> npt.NDArray[np.uint8]:
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk: npt.NDArray[np.uint8] = (dx * dx + dy * dy <= radius * radius).astype(np.uint8)
    return disk


def region_changes(
    truth: npt.NDArray[np.uint8],
    predicted: npt.NDArray[np.uint8],
    background: int | None,
    *,
    confusion: npt.NDArray[np.int64] | None = None,
) -> tuple[int, int]:
    """(regions the reviewer added, regions the reviewer removed): 8-connected parts of a class
    in one map that no pixel of that class in the other map overlaps. Parts wholly in unlabeled
    truth count for neither; the background class has no regions. ``confusion``, the maps'
    confusion matrix where already counted, says which classes each map has: its row and
    column sums are the two histograms this would otherwise count (0.83 ms for 0.9 MP)."""
    valid = truth != IGNORE_INDEX
    if confusion is None:
        in_truth_pixels, in_pred_pixels = _histogram(truth, valid), _histogram(predicted, valid)
    else:
        in_truth_pixels, in_pred_pixels = confusion.sum(axis=1), confusion.sum(axis=0)
    added = removed = 0
    for class_id in np.flatnonzero(in_truth_pixels + in_pred_pixels).tolist():
        if class_id == background:
            continue
        in_truth, in_pred = truth == class_id, (predicted == class_id) & valid
        # Every part of either lies inside the box of both: labeling only that box is exact,
        # and a class rarely spans the image.
        x, y, w, h = cv2.boundingRect((in_truth | in_pred).view(np.uint8))
        in_truth, in_pred = in_truth[y : y + h, x : x + w], in_pred[y : y + h, x : x + w]
        if in_truth_pixels[class_id]:
            added += _unmatched_parts(in_truth, in_pred)
        if in_pred_pixels[class_id]:
            removed += _unmatched_parts(in_pred, in_truth)
    return added, removed


def _histogram(
    labels: npt.NDArray[np.uint8], valid: npt.NDArray[np.bool_]
) -> npt.NDArray[np.int64]:
    counts = cv2.calcHist([labels], [0], valid.view(np.uint8), [256], [0, 256])
    return counts.ravel().astype(np.int64)


def _unmatched_parts(parts: npt.NDArray[np.bool_], other: npt.NDArray[np.bool_]) -> int:
    count, labels = cv2.connectedComponents(parts.view(np.uint8), connectivity=8)
    matched = np.zeros(count, bool)
    matched[labels[other & parts]] = True
    return int(count - 1 - np.count_nonzero(matched[1:]))


def stored_evaluations(view: RunView) -> list[Evaluation]:
    """The evaluations in a run folder, oldest first; files that are not evaluations are
    skipped, but a listing or read that fails raises: a table silently missing a model would
    mislead."""
    storage, folder = view.layout.storage, view.layout.storage.join(view.layout.root, EVALUATIONS)
    found = []
    try:
        listing = [info for info in storage.list(folder) if info.key.endswith(".json")]
    except NotFoundError:
        return []
    for info in listing:
        try:
            found.append(Evaluation.model_validate_json(storage.read(info.uri)))
        except ValidationError:
            continue
    return sorted(found, key=lambda e: e.evaluated_at)


def model_label(evaluation: Evaluation) -> str:
    """How a person names the model: its checkpoint's file name (or ``demo``), and the start
    of its version, which tells two files of one name apart."""
    name = PurePosixPath(evaluation.model_ref).name or evaluation.model_ref
    return f"{name} {evaluation.model_version[:8]}"


def to_markdown(evaluation: Evaluation, others: Sequence[Evaluation] = ()) -> str:
    """The evaluation, with every other model version evaluated against the same truth in a
    column beside it."""
    e = evaluation
    same = [o for o in others if o.truth_sha256 == e.truth_sha256]
    columns = [e, *(o for o in same if o.model_version != e.model_version)]
    lines = [
        f"# Evaluation of model {_cell(e.model_version)}",
        "",
        f"Run `{_cell(e.run)}` (model {_cell(e.model_ref)}) against truth `{_cell(e.truth)}` "
        f"(sha256 {e.truth_sha256[:12]}), {e.images} images, {e.pixels} labeled pixels, "
        f"boundary tolerance {e.boundary_tolerance} px, {e.evaluated_at:%Y-%m-%d %H:%M} UTC.",
        "",
        "| | " + " | ".join(_cell(model_label(c)) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    rows: list[tuple[str, Any]] = [
        ("model", lambda c: _cell(c.model_ref)),
        ("model version", lambda c: _cell(c.model_version)),
        ("images scored", lambda c: str(c.images)),
        ("mIoU", lambda c: percent(c.miou)),
        ("pixel accuracy", lambda c: percent(c.pixel_accuracy)),
        (
            "boundary F1",
            lambda c: f"{percent(c.boundary_f1)} ({c.boundary_tolerance} px)",
        ),
        ("pixels changed in review", lambda c: percent(c.changed_share)),
        ("regions added in review", lambda c: str(c.regions_added)),
        ("regions removed in review", lambda c: str(c.regions_removed)),
    ]
    names = list(dict.fromkeys(n for c in columns for n in c.class_names))
    for name in names:
        rows.append((f"IoU {_cell(name)}", lambda c, n=name: percent(c.iou.get(n))))
    lines += [f"| {label} | " + " | ".join(cell(c) for c in columns) + " |" for label, cell in rows]
    other_truth = [o for o in others if o.truth_sha256 != e.truth_sha256]
    if other_truth:
        lines += ["", "Not compared (evaluated against other truth):", ""]
        lines += [f"- {_cell(model_label(o))}: `{_cell(o.truth)}`" for o in other_truth]
    lines += ["", "## Confusion matrix", "", "Pixels; rows: truth, columns: prediction.", ""]
    lines += [
        "| truth \\ predicted | " + " | ".join(_cell(n) for n in e.class_names) + " |",
        "|---|" + "---:|" * len(e.class_names),
    ]
    lines += [
        f"| {_cell(name)} | " + " | ".join(str(v) for v in row) + " |"
        for name, row in zip(e.class_names, e.confusion, strict=True)
    ]
    ranked = e.most_corrected
    lines += [
        "",
        f"## Most corrected images ({len(ranked)} of {e.images})",
        "",
        "| image | pixels changed | boundary F1 | regions added | regions removed |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {_cell(s.key)} | {percent(s.changed_share)} | {percent(s.boundary_f1)} | "
        f"{s.regions_added} | {s.regions_removed} |"
        for s in ranked
    ]
    where = f" (all in `{_cell(e.per_image)}`)" if e.per_image else ""
    if e.failed:
        lines += ["", f"## Not scored: {e.failed} failed", ""]
        lines += [f"- {_cell(f.key)}: {_cell(f.reason)}" for f in e.failed_shown]
        lines += _more(e.failed, len(e.failed_shown), where)
    if e.missing:
        lines += ["", f"## Not scored: {e.missing} without truth", ""]
        lines += [f"- {_cell(key)}" for key in e.missing_shown]
        lines += _more(e.missing, len(e.missing_shown), where)
    if e.truth_unmatched:
        lines += ["", f"{e.truth_unmatched} truth labels match no image of the run."]
    if e.per_image:
        lines += ["", f"Every image's outcome is in `{_cell(e.per_image)}`."]
    return "\n".join(lines) + "\n"


def _more(count: int, shown: int, where: str) -> list[str]:
    return [f"- ... and {count - shown} more{where}"] if count > shown else []


def _write(view: RunView, name: str, text: str) -> None:
    storage = view.layout.storage
    storage.write_atomic(storage.join(view.layout.root, EVALUATIONS, name), text.encode())


def _cell(text: str) -> str:
    """Safe inside a markdown table cell and as HTML: no pipes, line breaks or tags."""
    return html.escape(" ".join(text.split())).replace("|", "\\|").replace("`", "'")


def percent(value: float | None) -> str:
    """A share as the tables print it: two decimals, "-" where there is none."""
    return "-" if value is None else f"{100 * value:.2f}%"


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _ratio(a: np.int64, b: np.int64) -> float | None:
    return float(a / b) if b else None


def _f1(counts: npt.NDArray[np.int64]) -> float | None:
    """Boundary F1 from (matched predicted, predicted, matched truth, truth): None when neither
    map has a boundary, 0 when only one has."""
    matched_pred, pred, matched_truth, true = (int(v) for v in counts)
    if not pred and not true:
        return None
    if not pred or not true:
        return 0.0
    precision, recall = matched_pred / pred, matched_truth / true
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0
