"""Supervised training loop: cross-entropy with an ignore label, AdamW, warm-up then poly decay.

Data comes in as uint8 batches, like inference, so the same :class:`Normalizer` prepares both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from deeplab.meta import ModelMeta
from deeplab.metrics import IGNORE_INDEX
from deeplab.model import DeepLab
from deeplab.preprocess import Normalizer

log = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray]  # N x H x W x 3 uint8 images, N x H x W uint8 labels


@dataclass(frozen=True, slots=True)
class TrainConfig:
    steps: int
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    poly_power: float = 0.9  # DeepLab's "poly" schedule: lr * (1 - step / steps) ** power
    aux_weight: float = 0.4  # weight of the auxiliary head's loss, where the model has one
    precision: Literal["float32", "bfloat16"] = "float32"
    log_every: int = 50


@dataclass(frozen=True, slots=True)
class StepLog:
    step: int
    loss: float  # mean over the steps since the previous log, this one included
    lr: float
    seconds: float  # wall time since training started


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then poly decay to zero at ``config.steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return float((1 - step / config.steps) ** config.poly_power)


def train(
    model: DeepLab,
    meta: ModelMeta,
    batches: Iterable[Batch],
    config: TrainConfig,
    *,
    device: torch.device,
    on_step: Callable[[StepLog], None] | None = None,
) -> list[StepLog]:
    """Train ``model`` in place for ``config.steps`` batches; returns the loss log, an entry
    every ``config.log_every`` steps and one for the last.

    ``on_step`` hears every step, not only the logged ones, so that progress and time estimates
    stay current when a step takes seconds; its loss is the mean since the last log entry.
    """
    model.train().to(device).to(memory_format=torch.channels_last)
    normalize = Normalizer(meta, device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]  # BN and biases
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    logs: list[StepLog] = []
    start, running, since = time.perf_counter(), 0.0, 0
    for step, (images, labels) in enumerate(batches):
        if step == config.steps:
            break
        x = normalize(torch.from_numpy(images).to(device))
        y = torch.from_numpy(labels).to(device, dtype=torch.long)
        with torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16"
        ):
            out, aux = model.forward_with_aux(x)
        loss = F.cross_entropy(out.float(), y, ignore_index=IGNORE_INDEX)
        if aux is not None:
            loss = loss + config.aux_weight * F.cross_entropy(
                aux.float(), y, ignore_index=IGNORE_INDEX
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        schedule.step()
        running, since = running + float(loss.detach()), since + 1
        lr = float(schedule.get_last_lr()[0])
        entry = StepLog(step + 1, running / since, lr, time.perf_counter() - start)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            logs.append(entry)
            log.info(
                "step %d/%d loss %.4f lr %.2e %.0fs",
                entry.step,
                config.steps,
                entry.loss,
                entry.lr,
                entry.seconds,
            )
            running, since = 0.0, 0
        if on_step is not None:
            on_step(entry)
    return logs
