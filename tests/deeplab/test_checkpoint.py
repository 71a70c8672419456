"""Checkpoint loading: the own format, torchvision and VainF files, and the refusals."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torchvision.models.segmentation import (
    deeplabv3_mobilenet_v3_large,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
)

import deeplab
from deeplab.checkpoint import META_KEY
from deeplab.convert import VAINF_PLUS_RULES, convert_state_dict
from tests.helpers import randomize_batchnorm_

FIXTURES = Path(__file__).parents[1] / "fixtures"
TORCHVISION_BUILDERS = [deeplabv3_resnet50, deeplabv3_resnet101, deeplabv3_mobilenet_v3_large]


def _small_model() -> tuple[deeplab.DeepLab, deeplab.ModelMeta]:
    torch.manual_seed(0)
    options = {"output_stride": 16, "separable": True}
    model = deeplab.build("deeplabv3plus_mobilenet_v2", num_classes=3, **options)
    randomize_batchnorm_(model)
    meta = deeplab.ModelMeta(
        arch="deeplabv3plus_mobilenet_v2",
        options=options,
        class_names=("bg", "cat", "dog"),
        provenance={"steps": 10},
    )
    return model.eval(), meta


def test_own_format_round_trips_weights_and_meta(tmp_path: Path) -> None:
    model, meta = _small_model()
    path = tmp_path / "m.safetensors"
    saved = deeplab.save(model, meta, path)
    loaded, loaded_meta = deeplab.load(path)
    assert loaded_meta == saved
    assert len(saved.model_version) == 16
    x = torch.rand(1, 3, 65, 97)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_own_format_is_plain_safetensors_with_json_metadata(tmp_path: Path) -> None:
    model, meta = _small_model()
    path = tmp_path / "m.safetensors"
    deeplab.save(model, meta, path)
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    stored = json.loads(header["__metadata__"][META_KEY])
    assert stored["class_names"] == ["bg", "cat", "dog"]
    assert stored["arch"] == "deeplabv3plus_mobilenet_v2"
    assert b"\x80\x02" not in raw[:16]  # not a pickle


def test_model_version_follows_outputs_not_provenance() -> None:
    model, meta = _small_model()
    state = model.state_dict()
    version = deeplab.meta.model_version(state, meta)
    renotes = meta.model_copy(update={"provenance": {"steps": 99}})
    assert deeplab.meta.model_version(state, renotes) == version
    relabel = meta.model_copy(update={"class_names": ("bg", "cat", "fox")})
    assert deeplab.meta.model_version(state, relabel) != version
    changed = dict(state)
    changed["head.classifier.bias"] = state["head.classifier.bias"] + 1e-3
    assert deeplab.meta.model_version(changed, meta) != version


@pytest.mark.parametrize("aux", [True, False])
@pytest.mark.parametrize("builder", TORCHVISION_BUILDERS, ids=lambda b: b.__name__)
def test_torchvision_state_dicts_give_torchvision_outputs(
    builder: object, aux: bool, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    tv = builder(weights=None, weights_backbone=None, num_classes=21, aux_loss=aux)  # type: ignore[operator]
    randomize_batchnorm_(tv).eval()
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    ours, meta = deeplab.load(path)
    assert meta.source == "torchvision"
    assert meta.arch == builder.__name__  # type: ignore[attr-defined]
    assert meta.class_names[15] == "person"  # VOC's names when the file carries none
    assert (ours.aux_head is not None) == aux
    for shape in [(2, 3, 97, 131), (1, 3, 64, 64)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            diff = (ours(x) - tv(x)["out"]).abs().max().item()
        assert diff <= 1e-4, f"{shape}: max |diff| {diff}"


def _fixture(name: str) -> dict[str, list[int]]:
    data = json.loads((FIXTURES / f"vainf_{name}_os16_keys.json").read_text())
    assert data["source"].startswith("VainF/DeepLabV3Plus-Pytorch@")
    return data["shapes"]


def _state_from_shapes(shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


def _vainf_container(state: dict[str, torch.Tensor], path: Path) -> None:
    # VainF's main.py save_ckpt: best_score is a numpy.float64 from its metrics
    torch.save(
        {
            "cur_itrs": 30000,
            "model_state": state,
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
            "scheduler_state": {"last_epoch": 30000, "base_lrs": [0.01]},
            "best_score": np.float64(0.7721),
        },
        path,
    )


@pytest.mark.parametrize(
    ("fixture", "arch", "low_channels"),
    [
        ("deeplabv3plus_resnet50", "deeplabv3plus_resnet50", 256),
        ("deeplabv3plus_mobilenet", "deeplabv3plus_mobilenet_v2", 24),
    ],
)
def test_vainf_checkpoints_load_from_their_real_key_layout(
    fixture: str, arch: str, low_channels: int, tmp_path: Path
) -> None:
    path = tmp_path / "best_deeplabv3plus_voc_os16.pth"
    _vainf_container(_state_from_shapes(_fixture(fixture)), path)
    model, meta = deeplab.load(path)
    assert (meta.arch, meta.source) == (arch, "vainf")
    assert meta.options["decoder_convs"] == 1
    assert model.head.low_level[0].in_channels == low_channels
    assert [conv[0].dilation[0] for conv in model.head.aspp.convs[1:4]] == [6, 12, 18]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 65, 97)).shape == (1, 21, 65, 97)


def test_vainf_conversion_maps_every_key_onto_ours() -> None:
    shapes = _fixture("deeplabv3plus_mobilenet")
    ours = deeplab.build("deeplabv3plus_mobilenet_v2", num_classes=21, decoder_convs=1)
    converted = convert_state_dict(_state_from_shapes(shapes), VAINF_PLUS_RULES, "fixture")
    assert {k: list(v.shape) for k, v in converted.items()} == {
        k: list(v.shape) for k, v in ours.state_dict().items()
    }


def test_vainf_checkpoint_written_under_numpy_1_loads(tmp_path: Path) -> None:
    # numpy 1 pickles its scalars as numpy.core.multiarray.scalar; numpy 2 as numpy._core....
    path = tmp_path / "numpy2.pth"
    _vainf_container(_state_from_shapes(_fixture("deeplabv3plus_mobilenet")), path)
    old = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(item, data)
    _, meta = deeplab.load(old)
    assert meta.arch == "deeplabv3plus_mobilenet_v2"


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (Path.touch, (str(marker),))

    path = tmp_path / "evil.pth"
    torch.save({"model_state": {"w": torch.zeros(1)}, "x": Exploit()}, path)
    with pytest.raises(deeplab.CheckpointError, match="not a readable weights-only checkpoint"):
        deeplab.load(path)
    assert not marker.exists()


def test_mismatched_keys_are_named_with_the_architecture(tmp_path: Path) -> None:
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
    state = tv.state_dict()
    del state["backbone.layer4.2.conv3.weight"]
    state["backbone.layer4.2.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(deeplab.CheckpointError) as err:
        deeplab.load(path)
    message = str(err.value)
    assert str(path) in message
    assert "deeplabv3_resnet50" in message
    assert "missing 1 ['backbone.layer4.2.conv3.weight']" in message
    assert "unexpected 1 ['backbone.layer4.2.extra.weight']" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a checkpoint"),  # empty file
        (b"hello, not a checkpoint", "not a checkpoint"),
        (b"PK\x03\x04 a zip, but not torch's", "not a readable weights-only checkpoint"),
        (struct.pack("<Q", 10) + b"{broken}!!", "broken safetensors file"),
    ],
)
def test_unreadable_files_fail_naming_the_file(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(deeplab.CheckpointError, match=message) as err:
        deeplab.load(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(deeplab.CheckpointError, match="cannot read checkpoint"):
        deeplab.load(tmp_path / "nope.pth")


def test_unknown_layout_says_what_it_looked_for(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(2)}, path)
    with pytest.raises(deeplab.CheckpointError, match="no known DeepLab checkpoint"):
        deeplab.load(path)


def test_foreign_safetensors_data_parallel_prefix_and_class_override(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tv = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    path = tmp_path / "tv.safetensors"
    safetensors.torch.save_file({f"module.{k}": v for k, v in tv.state_dict().items()}, path)
    _, meta = deeplab.load(path, classes=["bg", "road", "car", "sky"])
    assert meta.class_names == ("bg", "road", "car", "sky")
    _, generic = deeplab.load(path)
    assert generic.class_names == ("class_0", "class_1", "class_2", "class_3")
    with pytest.raises(
        deeplab.CheckpointError, match="2 class names given but the classifier has 4"
    ):
        deeplab.load(path, classes=["a", "b"])


def test_overrides_are_refused_for_own_checkpoints(tmp_path: Path) -> None:
    model, meta = _small_model()
    path = tmp_path / "m.safetensors"
    deeplab.save(model, meta, path)
    with pytest.raises(ValueError, match="carries its own architecture"):
        deeplab.load(path, classes=["a", "b", "c"])
