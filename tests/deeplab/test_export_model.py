"""`prelabel export-model`: the file another runtime serves gives torch's logits, at any batch
and size, and carries what a server needs to feed it and read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import deeplab
from deeplab.export import export_metadata, export_model
from tests.helpers import randomize_batchnorm_

onnxruntime = pytest.importorskip("onnxruntime")
openvino = pytest.importorskip("openvino")

# One V3+ per backbone family: the exporters see every kind of block once.
FAMILIES = [
    "deeplabv3plus_resnet50",
    "deeplabv3plus_mobilenet_v2",
    "deeplabv3plus_mobilenet_v3_large",
    "deeplabv3plus_xception65",
    "deeplabv3_resnet50",
]
SHAPES = [(2, 3, 65, 97), (1, 3, 120, 80)]  # neither the traced size nor a multiple of 16


def _model(name: str) -> tuple[deeplab.DeepLab, deeplab.ModelMeta]:
    torch.manual_seed(0)
    model = deeplab.build(name, num_classes=5)
    randomize_batchnorm_(model, seed=4)
    meta = deeplab.ModelMeta(
        arch=name, class_names=("bg", "a", "b", "c", "d"), mean=(0.4, 0.5, 0.6)
    )
    return model.eval(), meta


def _close(ours: np.ndarray, theirs: torch.Tensor) -> None:
    """1e-4 up to logits of 1, relative above: random ResNets reach logits in the thousands."""
    scale = max(1.0, theirs.abs().max().item())
    assert ours.shape == tuple(theirs.shape)
    assert np.abs(ours - theirs.numpy()).max() <= 1e-4 * scale


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_onnx_runs_in_onnx_runtime_as_torch_at_any_batch_and_size(
    name: str, tmp_path: Path
) -> None:
    model, meta = _model(name)
    path = tmp_path / "model.onnx"
    export_model(model, meta, path, "onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == export_metadata(meta)
    for shape in SHAPES:
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = model(x)
        _close(session.run(["logits"], {"images": x.numpy()})[0], expected)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES[:2])
def test_openvino_ir_runs_as_torch_and_keeps_the_metadata(name: str, tmp_path: Path) -> None:
    model, meta = _model(name)
    path = tmp_path / "ir" / "model.xml"
    export_model(model, meta, path, "openvino")
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.bin", "model.xml"]
    read = openvino.Core().read_model(path)
    assert json.loads(read.get_rt_info(["prelabel", "class_names"]).astype(str)) == list(
        meta.class_names
    )
    compiled = openvino.Core().compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for shape in SHAPES:
        x = torch.rand(*shape)
        with torch.no_grad():
            expected = model(x)
        _close(np.asarray(compiled({"images": x.numpy()})["logits"]), expected)


def test_the_cli_exports_the_demo_and_refuses_mistakes_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200"}

    def prelabel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows", "export-model", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )

    written = prelabel("demo", "--format", "onnx", "--out", str(tmp_path / "demo.onnx"))
    assert written.returncode == 0, written.stderr
    assert "wrote" in written.stderr and (tmp_path / "demo.onnx").stat().st_size > 1e6
    for args, reason in [
        (["demo", "--format", "tflite", "--out", "x.tflite"], "--format 'tflite': choose onnx"),
        (["demo", "--format", "onnx", "--out", "x.xml"], "onnx models are written to .onnx files"),
        ([str(tmp_path / "none.pth"), "--format", "onnx", "--out", "x.onnx"], "none.pth"),
    ]:
        refused = prelabel(*args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and reason in refused.stderr
