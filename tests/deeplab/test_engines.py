"""Engines behind the Predictor: OpenVINO gives torch's logits at float32 on every architecture,
the demo's class maps at its default precision, converts once per model, and is chosen by
timing, not by assumption; without it, auto falls back to torch and asking for it is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import deeplab
from deeplab import engines
from deeplab.demo import DEMO_CHECKPOINT
from deeplab.preprocess import Normalizer
from deeplab.scenes import scenes
from pipeline.config import RunConfig
from pipeline.labeling import models
from pipeline.labeling.models import ModelSetupError, load_predictor
from tests.helpers import make_images, randomize_batchnorm_

pytestmark = pytest.mark.skipif(
    engines.openvino_missing() is not None, reason=f"{engines.openvino_missing()}"
)


def _torch_logits(
    model: deeplab.DeepLab, meta: deeplab.ModelMeta, batch: np.ndarray
) -> torch.Tensor:
    x = Normalizer(meta, torch.device("cpu"))(torch.from_numpy(batch), channels_last=False)
    with torch.no_grad():
        return model.eval().forward_logits(x)


# smp's layout once per head: its ResNets differ from the others only in their dilations.
ENGINE_MODELS = [
    name for name in deeplab.list_models() if not name.startswith("smp_") or "mobilenet" in name
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ENGINE_MODELS)
def test_openvino_at_float32_gives_torchs_logits_on_every_architecture(
    name: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = deeplab.build(name, num_classes=5)
    randomize_batchnorm_(model, seed=2)
    meta = deeplab.ModelMeta(arch=name, class_names=tuple("abcde"), mean=(0.4, 0.5, 0.6))
    engine = engines.OpenVinoEngine(model, meta, precision="float32", cache_dir=tmp_path)
    assert engine.precision == "float32"
    rng = np.random.default_rng(0)
    for shape in [(2, 65, 97, 3), (1, 120, 80, 3)]:  # one compiled model, sizes not seen before
        batch = rng.integers(0, 256, shape, dtype=np.uint8)
        ours, theirs = engine(batch), _torch_logits(model, meta, batch)
        assert ours.shape == theirs.shape
        # Randomly initialized ResNets reach logits in the thousands, where float32 rounding
        # alone passes 1e-3: the bound is 1e-3 up to logits of 1, relative above.
        scale = max(1.0, theirs.abs().max().item())
        assert (ours - theirs).abs().max().item() <= 1e-3 * scale


def test_maps_decoded_inside_openvino_equal_torchs_at_float32(tmp_path: Path) -> None:
    """Images labeled at the size the model sees take the maps model (upsample, argmax and
    confidence in the graph); downscaled ones the logits and torch's decode: both as torch."""
    torch.manual_seed(0)
    model = deeplab.build("deeplabv3plus_mobilenet_v2", num_classes=6)
    randomize_batchnorm_(model, seed=3)
    meta = deeplab.ModelMeta(arch="deeplabv3plus_mobilenet_v2", class_names=tuple("abcdef"))
    rng = np.random.default_rng(1)
    shapes = [(97, 131), (64, 80), (50, 70), (97, 131), (33, 47)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    # The second and the last as if downscaled for the model; more images than OpenVINO has
    # requests in flight, of mixed sizes, come back in order.
    sizes = [(97, 131), (128, 160), (50, 70), (97, 131), (66, 94)]
    reference = deeplab.Predictor(model, meta, device="cpu").predict(images, sizes)
    ours = deeplab.Predictor(
        model, meta, device="cpu", engine="openvino", precision="float32", cache_dir=tmp_path
    ).predict(images, sizes)
    for a, b in zip(reference, ours, strict=True):
        assert a.class_map.shape == b.class_map.shape
        assert (a.class_map != b.class_map).mean() < 1e-3  # near-ties may fall either way
        assert np.abs(a.confidence.astype(int) - b.confidence).max() <= 1
        assert abs(a.mean_confidence - b.mean_confidence) < 2e-3


def test_the_demo_at_openvinos_default_precision_agrees_with_float32(tmp_path: Path) -> None:
    """A trained model on the scenes it knows: a random model's logits are nearly flat and flip
    under any lower precision, so they say nothing about it."""
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    images = [s.image for s in scenes(7, 6, height=240, width=320)]
    reference = deeplab.Predictor(model, meta, device="cpu", precision="float32").predict(images)
    fast = deeplab.Predictor(model, meta, device="cpu", engine="openvino", cache_dir=tmp_path)
    predicted = fast.predict(images)
    agreement = np.mean(
        [(a.class_map == b.class_map).mean() for a, b in zip(reference, predicted, strict=True)]
    )
    print(f"{fast.precision}: {agreement:.4%} of pixels agree with torch float32")
    assert agreement >= 0.99
    # Maps decoded in the graph carry the figures of their uint8 confidence, exactly.
    assert any((p.confidence == 128).any() for p in predicted)  # on the threshold itself
    for p in predicted:
        assert p.mean_confidence == p.confidence.mean() / 255
        assert p.low_confidence_share == np.mean(p.confidence < 128)


def test_a_converted_model_is_kept_and_not_converted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, meta = deeplab.load(DEMO_CHECKPOINT)
    first = deeplab.Predictor(model, meta, device="cpu", engine="openvino", cache_dir=tmp_path)
    first.predict_tiled(next(scenes(2, 1, height=96, width=128)).image, tile=64, overlap=16)
    kept = sorted((tmp_path / "openvino").iterdir())
    assert [k.name.rsplit("-", 1)[1] for k in kept] == ["logits", "maps"]
    assert all(k.name.startswith(meta.model_version) for k in kept)
    assert all((k / "model.bin").stat().st_size > 1e6 for k in kept)

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr("openvino.convert_model", no_conversion)
    second = deeplab.Predictor(model, meta, device="cpu", engine="openvino", cache_dir=tmp_path)
    image = next(scenes(1, 1, height=96, width=128)).image
    assert np.array_equal(first.predict([image])[0].class_map, second.predict([image])[0].class_map)
    tiled = second.predict_tiled(np.tile(image, (3, 3, 1)), tile=128, overlap=32)
    assert tiled.class_map.shape == (288, 384)


_CONVERT_THE_DEMO = """
import sys
from pathlib import Path
import deeplab
from deeplab.demo import DEMO_CHECKPOINT
from deeplab.scenes import scenes
model, meta = deeplab.load(DEMO_CHECKPOINT)
cache = Path(sys.argv[1])
predictor = deeplab.Predictor(model, meta, device="cpu", engine="openvino", cache_dir=cache)
predictor.predict([next(scenes(1, 1, height=64, width=96)).image])
"""


def test_openvino_sends_no_telemetry_and_leaves_nothing_in_home(tmp_path: Path) -> None:
    """Left alone, OpenVINO counts every import in ``$HOME/intel`` and posts it to an analytics
    service from a forked process; a run that converts and predicts must do neither."""
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _CONVERT_THE_DEMO, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home), "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cache" / "openvino").is_dir()  # it did convert
    assert list(home.iterdir()) == []


def test_auto_times_both_engines_once_and_remembers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = RunConfig(source="in", out="out", device="cpu", cache_dir=tmp_path)
    models._cached.cache_clear()
    chosen = load_predictor(config)
    (entry,) = json.loads((tmp_path / "engines.json").read_text()).values()
    assert set(entry["ms"]) == {"torch", "openvino"}
    assert entry["engine"] == min(entry["ms"], key=entry["ms"].get) == chosen.engine.name

    def no_timing(*args: object, **kwargs: object) -> None:
        raise AssertionError("timed again")

    monkeypatch.setattr(models, "timings", no_timing)
    models._cached.cache_clear()
    assert load_predictor(config).engine.name == chosen.engine.name
    models._cached.cache_clear()


def test_without_openvino_auto_runs_torch_and_asking_for_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(models, "openvino_missing", lambda: "openvino does not load here (x)")
    models._cached.cache_clear()
    try:
        config = RunConfig(source="in", out="out", device="cpu", cache_dir=tmp_path)
        assert load_predictor(config).engine.name == "torch"
        assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
            "engine auto: openvino does not load here (x); running on torch"
        ]
        with pytest.raises(ModelSetupError, match="engine openvino: openvino does not load"):
            load_predictor(config.model_copy(update={"engine": "openvino"}))
    finally:
        models._cached.cache_clear()


@pytest.mark.slow
def test_the_cli_says_in_one_line_when_openvino_cannot_load(tmp_path: Path) -> None:
    """A package named openvino that fails to import, as on a machine without its libraries."""
    broken = tmp_path / "site" / "openvino"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("libopenvino.so: not found")\n')
    make_images(tmp_path / "in", 2)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path]),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "COLUMNS": "200",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
    }

    def prelabel(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flows", "annotate", str(tmp_path / "in"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )

    refused = prelabel("--out", str(tmp_path / "a"), "--engine", "openvino")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "prelabel: cannot start: engine openvino: openvino does not load here "
        "(libopenvino.so: not found)"
    ]
    fallback = prelabel("--out", str(tmp_path / "b"))
    assert fallback.returncode == 0, fallback.stderr
    warnings = [line for line in fallback.stderr.splitlines() if "openvino" in line]
    assert warnings == [
        "prelabel: engine auto: openvino does not load here (libopenvino.so: not found); "
        "running on torch"
    ]
    rows = pq.read_table(next((tmp_path / "b" / "images").iterdir())).to_pylist()
    assert {(r["engine"], r["precision"]) for r in rows} == {("torch", rows[0]["precision"])}
    assert json.loads((tmp_path / "b" / "run.json").read_text())["engine"].startswith("torch ")
