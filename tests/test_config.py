"""Run configuration: environment fills gaps, flags win, typos fail by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.config import RunConfig


def test_environment_fills_what_the_caller_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRELABEL_BATCH_SIZE", "16")
    monkeypatch.setenv("PRELABEL_REGIONS__MIN_AREA", "64")
    config = RunConfig(source="in", out="out")
    assert config.batch_size == 16
    assert config.regions.min_area == 64
    assert RunConfig(source="in", out="out", batch_size=4).batch_size == 4  # explicit wins


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_sise": 4}, "batch_sise"),  # a typo is an error, not silently ignored
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"regions": {"min_aera": 3}}, "min_aera"),
        ({"low_confidence": 1.5}, "less than 1"),
        ({"output_stride": 4}, "output_stride"),
    ],
)
def test_bad_fields_fail_by_name(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RunConfig(source="in", out="out", **fields)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    config = RunConfig(source="in", out="out")
    with pytest.raises(ValidationError):
        config.batch_size = 3  # type: ignore[misc]
