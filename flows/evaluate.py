"""The evaluate flow: score runs against reviewed labels and show the result as an artifact,
so a schedule can track every model version against the same truth."""

from __future__ import annotations

import re

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pipeline.formats import open_run
from pipeline.quality.evaluate import Evaluation, evaluate_runs, stored_evaluations, to_markdown
from pipeline.quality.truth import open_truth


@flow(name="evaluate")
def evaluate_flow(
    run: str, truth: str, boundary_tolerance: int = 2, compare: tuple[str, ...] = ()
) -> list[Evaluation]:
    """Evaluate ``run`` (and each run in ``compare``) against ``truth``; the markdown of the
    first, with the others beside it, becomes the ``evaluation-<model version>`` artifact."""
    views = [open_run(folder) for folder in (run, *compare)]
    evaluations = evaluate_runs(views, open_truth(truth), tolerance=boundary_tolerance)
    first = evaluations[0]
    create_markdown_artifact(
        key=_artifact_key(first.model_version),
        markdown=to_markdown(first, stored_evaluations(views[0])),
        description=f"prelabel evaluate: {first.run} against {first.truth}",
    )
    return evaluations


def _artifact_key(model_version: str) -> str:
    """Artifact keys take lowercase letters, digits and dashes only."""
    return "evaluation-" + (re.sub(r"[^a-z0-9-]+", "-", model_version.lower()).strip("-") or "x")
