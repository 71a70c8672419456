"""Shared test setup: ``gpu`` tests skip cleanly where CUDA is absent; fixtures that start
real servers live in their own modules."""

from __future__ import annotations

import pytest
import torch

pytest_plugins = ["tests.prefect_server"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA not available")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
