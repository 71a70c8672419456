"""The train flow: fine-tune on reviewed labels, so a schedule can retrain as reviews come in."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pipeline.training.config import FinetuneConfig
from pipeline.training.finetune import FinetuneResult, finetune


@flow(name="train")
def train_flow(config: FinetuneConfig) -> FinetuneResult:
    """``finetune`` as a flow run; its summary becomes the ``train`` artifact."""
    result = finetune(config)
    create_markdown_artifact(
        key="train",
        markdown=result.to_markdown(),
        description=f"prelabel train: {config.init} on {config.images}",
    )
    return result
