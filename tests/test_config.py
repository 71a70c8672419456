"""Run configuration: environment fills gaps, flags win, typos fail by name."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from pipeline.config import RunConfig, undecodable_variable


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


def _clear_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.upper().startswith("PRELABEL_"):
            monkeypatch.delenv(name)


def _as_variables(dumped: dict[str, Any], prefix: str = "PRELABEL_") -> dict[str, str]:
    """Each setting's variable with its value as a user would write it; None has no spelling."""
    variables: dict[str, str] = {}
    for field, value in dumped.items():
        name = prefix + field.upper()
        if isinstance(value, dict):
            variables |= _as_variables(value, name + "__")
        elif isinstance(value, list):
            variables[name] = ",".join(value)
        elif isinstance(value, bool):
            variables[name] = str(value).lower()
        elif value is not None:
            variables[name] = str(value)
    return variables


def test_every_setting_has_a_variable_that_works(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_settings(monkeypatch)
    default = RunConfig(source="in", out="out")
    variables = _as_variables(default.model_dump(mode="json", exclude={"source", "out"}))
    assert {"PRELABEL_REGIONS__MIN_AREA", "PRELABEL_S3__READ_TIMEOUT"} <= variables.keys()
    assert {"PRELABEL_EXPORT_OPTIONS__WKB", "PRELABEL_LEASE_TIMEOUT"} <= variables.keys()
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert RunConfig(source="in", out="out") == default


def test_nested_and_lower_case_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_settings(monkeypatch)
    monkeypatch.setenv("PRELABEL_S3__ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("PRELABEL_EXPORT_OPTIONS__WKB", "true")
    monkeypatch.setenv("prelabel_regions__min_area", "64")
    config = RunConfig(source="in", out="out")
    assert config.s3.endpoint_url == "http://minio:9000"
    assert config.export_options.wkb
    assert config.regions.min_area == 64


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("PRELABEL_FOO", "settings are PRELABEL_SOURCE, PRELABEL_OUT"),
        ("prelabel_batch_sise", "PRELABEL_BATCH_SIZE,"),
        ("PRELABEL_BATCH_SIZE__MAX", "PRELABEL_REGIONS__*"),
        ("PRELABEL_REGIONS__MIN_AERA", "under PRELABEL_REGIONS__ are PRELABEL_REGIONS__INSTANCES"),
        ("PRELABEL_S3__SECRET_KEY", "PRELABEL_S3__ENDPOINT_URL"),
    ],
)
def test_an_unknown_variable_fails_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, accepted: str
) -> None:
    _clear_settings(monkeypatch)
    monkeypatch.setenv(name, "hunter2")
    with pytest.raises(ValidationError) as raised:
        RunConfig(source="in", out="out")
    (error,) = raised.value.errors()
    assert error["msg"].startswith(f"Value error, {name}: no such setting; ")
    assert accepted in error["msg"]
    assert "hunter2" not in error["msg"]  # the value may be a secret: not repeated


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_devices_torch_takes_are_accepted(device: str) -> None:
    assert RunConfig(source="in", out="out", device=device).device == device


@pytest.mark.parametrize(
    "device",
    ["tpu", "", pytest.param("gpu", id="gpu-word"), "mps", "CPU", "cuda:", "cuda:-1", "cuda:01"],
)
def test_other_devices_fail_saying_what_is_accepted(device: str) -> None:
    with pytest.raises(ValidationError, match=r"choose auto, cpu, cuda or cuda:N"):
        RunConfig(source="in", out="out", device=device)


@pytest.mark.parametrize(
    ("value", "exports"),
    [
        ("coco", ("coco",)),
        ("coco,masks", ("coco", "masks")),
        (" coco , parquet ", ("coco", "parquet")),
        ('["coco", "masks"]', ("coco", "masks")),
        ("", ()),
    ],
)
def test_exports_from_the_environment_are_comma_separated(
    monkeypatch: pytest.MonkeyPatch, value: str, exports: tuple[str, ...]
) -> None:
    _clear_settings(monkeypatch)
    monkeypatch.setenv("PRELABEL_EXPORTS", value)
    assert RunConfig(source="in", out="out").exports == exports


def test_a_variable_that_is_not_json_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_settings(monkeypatch)
    monkeypatch.setenv("PRELABEL_S3", '{"endpoint_url": "http://user:secret@host"')
    with pytest.raises(SettingsError) as raised:
        RunConfig(source="in", out="out")
    reason = undecodable_variable(raised.value)
    assert reason.startswith('PRELABEL_S3=\'{"endpoint_url": "http://***@host"\': not a JSON')
    assert "secret" not in reason
    assert "PRELABEL_S3__ENDPOINT_URL" in reason


def test_overlapping_tiles_name_both_fields() -> None:
    with pytest.raises(ValidationError) as raised:
        RunConfig(source="in", out="out", tile_size=128)
    (error,) = raised.value.errors()
    assert error["msg"] == "tile_size 128 must be larger than the tile overlap (256, tile_overlap)"
    assert error["ctx"]["fields"] == ("tile_size", "tile_overlap")
