"""The command line starts without torch, Prefect or boto3, and a rerun with nothing to label
answers without loading the model: its identity comes from the checkpoint's bytes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deeplab
from deeplab.bundled import DEMO_CHECKPOINT
from pipeline.config import RunConfig
from pipeline.labeling import model_ids

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
HEAVY = ("torch", "prefect", "boto3")


def _python(code: str, tmp_path: Path) -> list[str]:
    """Runs ``code`` in a fresh interpreter with its own cache; returns its printed lines."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_command_line_imports_no_heavy_library(tmp_path: Path) -> None:
    loaded = _python(
        f"import sys, flows.cli, pipeline.config; print([m for m in {HEAVY} if m in sys.modules])",
        tmp_path,
    )
    assert loaded == ["[]"]


def test_a_rerun_with_nothing_to_label_loads_no_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = f"""
import sys
from flows.cli import app
try:
    app(["annotate", {str(EXAMPLES)!r}, "--out", {str(out)!r}], standalone_mode=False)
except SystemExit as exc:
    assert not exc.code, exc.code
print([m for m in {HEAVY} if m in sys.modules])
"""
    # Two processes sharing a cache: the first labels, the second finds nothing to do.
    assert "torch" in _python(code, tmp_path)[-1]
    before = _manifest(out)
    assert _python(code, tmp_path)[-1] == "[]"
    assert _manifest(out) == before  # the same run, engine included


def _manifest(out: Path) -> dict[str, object]:
    """``run.json`` without its times."""
    manifest = json.loads((out / "run.json").read_text())
    return {k: v for k, v in manifest.items() if k not in ("started_at", "finished_at")}


def _config(tmp_path: Path, model: Path | str = "demo", stride: int | None = None) -> RunConfig:
    return RunConfig(
        source=str(EXAMPLES),
        out=str(tmp_path / "run"),
        model=str(model),
        device="cpu",
        engine="torch",
        output_stride=stride,
        cache_dir=tmp_path / "cache",
    )


def _no_load(config: RunConfig) -> None:
    raise AssertionError("the model was loaded")


def test_a_checkpoint_loaded_once_is_known_by_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = tmp_path / "model.safetensors"
    shutil.copy(DEMO_CHECKPOINT, checkpoint)
    _, meta = deeplab.load(checkpoint)

    first = model_ids.model_info(_config(tmp_path, checkpoint))
    assert (first.model_version, first.arch, first.class_names) == (
        meta.model_version,
        meta.arch,
        meta.class_names,
    )
    monkeypatch.setattr("pipeline.labeling.models.load_predictor", _no_load)
    assert model_ids.model_info(_config(tmp_path, checkpoint)) == first
    # The same bytes under another name are the same model; the ref is what was asked for.
    assert model_ids.model_info(_config(tmp_path, "demo")).model_version == meta.model_version
    assert model_ids.model_info(_config(tmp_path, "demo")).ref == "demo"

    # Other bytes at the same path: another model, loaded to learn what it is.
    model, _ = deeplab.load(checkpoint)
    next(model.parameters()).data.add_(1.0)
    changed = deeplab.save(model, meta, checkpoint)
    with pytest.raises(AssertionError, match="was loaded"):
        model_ids.model_info(_config(tmp_path, checkpoint))
    monkeypatch.undo()
    assert model_ids.model_info(_config(tmp_path, checkpoint)).model_version == (
        changed.model_version
    )


def test_another_output_stride_is_another_model(tmp_path: Path) -> None:
    at_16 = model_ids.model_info(_config(tmp_path))
    at_8 = model_ids.model_info(_config(tmp_path, stride=8))
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    assert at_8.model_version == deeplab.at_output_stride(model, meta, 8)[1].model_version
    assert at_8.model_version != at_16.model_version


def test_a_damaged_cache_costs_a_load_not_a_wrong_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known = model_ids.model_info(_config(tmp_path))
    (tmp_path / "cache" / "models.json").write_text('{"not": "entries"')
    loads: list[RunConfig] = []
    import pipeline.labeling.models

    original = pipeline.labeling.models.load_predictor
    monkeypatch.setattr(
        "pipeline.labeling.models.load_predictor", lambda c: loads.append(c) or original(c)
    )
    assert model_ids.model_info(_config(tmp_path)) == known
    assert len(loads) == 1


def test_a_rerun_with_new_images_lists_its_source_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line plans to learn whether there is work; the flow's plan in the same
    process takes that listing over instead of listing the source again."""
    from pipeline.labeling.annotate import annotate, finish_if_done, plan_run, run_lease
    from pipeline.storage import LocalStorage

    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(EXAMPLES / "scene-000.jpg", source)
    config = _config(tmp_path).model_copy(update={"source": str(source)})
    annotate(config)
    shutil.copy(EXAMPLES / "scene-001.jpg", source)
    listings: list[str] = []
    original = LocalStorage.list

    def counted(self: LocalStorage, prefix: str) -> object:
        listings.append(prefix)
        return original(self, prefix)

    monkeypatch.setattr(LocalStorage, "list", counted)
    with run_lease(config) as lease:
        assert finish_if_done(config, lease.token) is None  # there is work
        plan = plan_run(config, lease.token)  # the flow's plan
        again = plan_run(config, lease.token)  # a repair pass lists afresh
    assert [item.key for shard in plan.shards for item in shard.items] == ["scene-001.jpg"]
    assert [prefix for prefix in listings if prefix == str(source)] == [str(source)] * 2
    assert again.shards == plan.shards
