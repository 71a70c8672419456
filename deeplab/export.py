"""A model as a file other runtimes serve: ONNX (ONNX Runtime, Triton, CVAT's serverless
functions) or OpenVINO IR (OpenVINO Model Server).

Both take what such servers expect: float32 N x 3 x H x W, already normalized, with batch,
height and width free; both give logits at the input size. What a caller needs to feed them
and read them travels inside the file: the class names, the mean and std to normalize with,
the architecture and the model version.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import torch

from deeplab.engines import openvino_module
from deeplab.errors import EngineError
from deeplab.files import write_atomic
from deeplab.meta import ModelMeta
from deeplab.model import DeepLab

Format = Literal["onnx", "openvino"]
INPUT, OUTPUT = "images", "logits"
_AXES = {0: "batch", 2: "height", 3: "width"}


def export_metadata(meta: ModelMeta) -> dict[str, str]:
    """What a server needs besides the weights, as strings (what both formats hold)."""
    return {
        "arch": meta.arch,
        "model_version": meta.model_version,
        "class_names": json.dumps(list(meta.class_names)),
        "mean": json.dumps(list(meta.mean)),
        "std": json.dumps(list(meta.std)),
        "input": f"{INPUT}: float32 N x 3 x H x W, RGB / 255, minus mean, over std",
        "output": f"{OUTPUT}: float32 N x classes x H x W",
    }


def export_model(model: DeepLab, meta: ModelMeta, path: Path, format: Format) -> None:
    """Write ``model`` to ``path`` (a ``.onnx`` file, or an OpenVINO ``.xml`` with its
    ``.bin``), whole or not at all."""
    model = model.eval().cpu()
    example = torch.rand(1, 3, 64, 64)
    if format == "onnx":
        write_atomic(path, _onnx_bytes(model, example, export_metadata(meta)))
        return
    ov = openvino_module()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        converted = ov.convert_model(model, example_input=example)
    converted.reshape([-1, 3, -1, -1])
    converted.inputs[0].get_tensor().set_names({INPUT})
    converted.outputs[0].get_tensor().set_names({OUTPUT})
    for key, value in export_metadata(meta).items():
        converted.set_rt_info(value, ["prelabel", key])
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.partial.xml")
    try:
        ov.save_model(converted, staging, compress_to_fp16=False)
        staging.with_suffix(".bin").replace(path.with_suffix(".bin"))
        staging.replace(path)
    except (OSError, RuntimeError) as exc:
        raise EngineError(f"{path}: cannot write the OpenVINO model ({exc})") from exc
    finally:
        staging.unlink(missing_ok=True)
        staging.with_suffix(".bin").unlink(missing_ok=True)


def _onnx_bytes(model: DeepLab, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    try:
        import onnx
    except ImportError as exc:
        raise EngineError("ONNX export needs the onnx package: pip install onnx") from exc
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        traced = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            (example,),
            traced,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: _AXES, OUTPUT: _AXES},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: no extra dependencies, dynamic axes as named
        )
        proto = onnx.load(traced)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    data: bytes = proto.SerializeToString()
    return data
