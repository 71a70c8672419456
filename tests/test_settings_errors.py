"""A settings mistake ends in one line naming what the user typed, exit 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from PIL import Image
from pydantic import BaseModel, ValidationError, field_validator

from flows.cli.common import cannot_start, describe, flags_given
from pipeline.config import RunConfig

PRELABEL = [sys.executable, "-c", "from flows.cli import app; app()"]


def _run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("PRELABEL_")}
    return subprocess.run(
        [*PRELABEL, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**clean, **env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"},
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize(
    ("flags", "env", "said"),
    [
        ([], {"PRELABEL_FOO": "1"}, "PRELABEL_FOO: no such setting; settings are PRELABEL_"),
        (["--device", "tpu"], {}, "--device 'tpu': choose auto, cpu, cuda or cuda:N"),
        (
            [],
            {"PRELABEL_REGIONS": "abc"},
            "PRELABEL_REGIONS='abc': not a JSON object; set one field at a time instead: "
            "PRELABEL_REGIONS__INSTANCES, PRELABEL_REGIONS__MIN_AREA",
        ),
        ([], {"PRELABEL_BATCH_SIZE": "0"}, "PRELABEL_BATCH_SIZE=0: must be greater"),
        (
            ["--tile-size", "128"],
            {"PRELABEL_EXPORTS": "coco,masks"},  # read, so not what is wrong
            "--tile-size 128 must be larger than the tile overlap (256, PRELABEL_TILE_OVERLAP)",
        ),
    ],
)
def test_a_settings_mistake_is_one_line_in_the_users_words_exit_2(
    tmp_path: Path, flags: list[str], env: dict[str, str], said: str
) -> None:
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.png")
    result = _run("annotate", "in", "--out", "run", *flags, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prelabel: cannot start: "), result.stderr
    assert said in lines[0]


def _errors(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **fields: object) -> list[str]:
    for name in os.environ:
        if name.upper().startswith("PRELABEL_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    given = {k: v for k, v in fields.items() if v is not None}
    with pytest.raises(ValidationError) as raised:
        RunConfig(source="in", out="out", **given)  # type: ignore[arg-type]
    return [describe(e, flags_given(given), "PRELABEL_") for e in raised.value.errors()]


@pytest.mark.parametrize(
    ("env", "fields", "said"),
    [
        ({}, {"batch_size": 0}, "--batch-size 0: must be greater than or equal to 1"),
        ({"PRELABEL_BATCH_SIZE": "4"}, {"batch_size": 0}, "--batch-size 0: must be"),  # flag wins
        ({}, {"device": ""}, "--device '': choose auto, cpu, cuda or cuda:N (N a GPU index)"),
        (
            {},
            {"regions": {"instances": "polygons"}},
            "--instances 'polygons': must be 'components' or 'semantic'",
        ),
        ({"PRELABEL_REGIONS__MIN_AREA": "0"}, {}, "PRELABEL_REGIONS__MIN_AREA=0: must be"),
        ({"PRELABEL_REGIONS": '{"min_area": 0}'}, {}, "PRELABEL_REGIONS min_area=0: must be"),
        ({"PRELABEL_PRECISION": "half"}, {}, "PRELABEL_PRECISION='half': must be 'auto'"),
        (
            {"PRELABEL_TILE_OVERLAP": "2000"},
            {"tile_size": 1500},
            "--tile-size 1500 must be larger than the tile overlap (2000, PRELABEL_TILE_OVERLAP)",
        ),
        (
            {"PRELABEL_S3__ENDPOINT_URL": "ftp://user:secret@host"},
            {},
            "PRELABEL_S3__ENDPOINT_URL='ftp://***@host': endpoint_url must be an http(s) URL",
        ),
    ],
)
def test_run_settings_are_named_as_the_user_set_them(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fields: dict[str, object], said: str
) -> None:
    (line,) = _errors(monkeypatch, env, **fields)
    assert line.startswith(said), line


class _Even(BaseModel):
    steps: int

    @field_validator("steps")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even")
        return value


def test_other_commands_get_field_and_message_without_pydantic_wording() -> None:
    with pytest.raises(ValidationError) as raised:
        _Even(steps=3)
    assert [describe(e) for e in raised.value.errors()] == ["steps: must be even"]


def test_a_reason_quoting_brackets_is_printed_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        cannot_start("PRELABEL_REGIONS='[bold]x': not a JSON object")
    assert "PRELABEL_REGIONS='[bold]x': not a JSON object" in capsys.readouterr().err
