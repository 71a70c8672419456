"""The region settings a run is labeled with: checked with the run's config, without
importing what traces regions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RegionPolicy(BaseModel):
    """Which pixels become regions, and when a polygon is faithful enough to be written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instances: Literal["components", "semantic"] = "components"
    min_area: int = Field(16, ge=1)  # pixels; smaller components are speckle, dropped
    fill_holes_below: int = Field(0, ge=0)  # pixels; smaller holes are filled, 0 keeps all
    simplify_tolerance: float = Field(0.5, ge=0)  # pixels; 0 keeps the exact pixel boundary
    min_fidelity: float = Field(0.9, ge=0, le=1)  # polygon IoU below this: exporters use RLE
    max_vertices: int = Field(20_000, ge=0)  # per image; over it the largest rings go RLE
    background: int | None = 0  # the class that yields no regions; None: every class does
