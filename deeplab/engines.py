"""Engines that run a model's forward: uint8 NHWC images in, NCHW float logits out.

``torch`` runs the module itself (CUDA's engine: bfloat16 autocast, channels_last, optional
compile). ``openvino`` runs the same weights converted once to an OpenVINO model, the fastest
CPU path there is: on this project's 2-core AVX-512 machine its default (bfloat16) forward of
the demo model took 48 ms at 480x640 against 85 ms for torch's bfloat16 autocast. Both take
the same input, so normalization lives inside each engine; the Predictor decodes their logits
(upsample, argmax, confidence), except where OpenVINO does that inside its own graph.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn

from deeplab.errors import EngineError
from deeplab.meta import ModelMeta
from deeplab.model import DeepLab
from deeplab.preprocess import Normalizer

log = logging.getLogger(__name__)

Engine = Literal["torch", "openvino"]
Precision = Literal["float32", "bfloat16", "float16"]
_Probe = TypeVar("_Probe")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_OV_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
_FROM_OV: dict[str, Precision] = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
# OpenVINO requests in flight: a batch of two, the CPU batch, keeps both busy.
STREAMS = 2


class TorchEngine:
    """The module itself, on its device."""

    name: Engine = "torch"

    def __init__(
        self,
        model: DeepLab,
        meta: ModelMeta,
        device: torch.device,
        *,
        precision: Precision,
        channels_last: bool,
        compile: bool,
    ) -> None:
        self.device, self.precision, self.channels_last = device, precision, channels_last
        self.model = model.eval().to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._logits = self.model.forward_logits
        if compile:
            # On a CPU, freezing folds BatchNorm into the convs and prepacks their weights for
            # oneDNN: measured 1.4x over eager channels_last (MobileNetV3, 480x640, 2 cores),
            # where plain compile gained nothing. Inference only, which an engine is.
            options: dict[str, Any] | None = {"freezing": True} if device.type == "cpu" else None
            self._logits = torch.compile(self.model.forward_logits, options=options)
        self._normalize = Normalizer(meta, device)

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        host = torch.from_numpy(batch)
        if self.device.type == "cuda":
            host = host.pin_memory()
        device_batch = host.to(self.device, non_blocking=True)
        x = self._normalize(device_batch, channels_last=self.channels_last)
        dtype = _DTYPES[self.precision]
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits: torch.Tensor = self._logits(x)
        return logits


class _Normalized(nn.Module):
    """What the OpenVINO logits model computes: uint8 NHWC in, logits out, normalization
    included, so the engine's input is the decoded image as it is."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: DeepLab, meta: ModelMeta) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(meta.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(meta.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        return self.model.forward_logits(x)


class _Maps(_Normalized):
    """The maps model: the logits upsampled to the input size, then the class map and the max
    softmax as uint8, inside the graph: only two bytes a pixel leave it (measured 3 ms for the
    demo at 480x640, where the same decode in torch took 11)."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = super().forward(images)
        up = self.model.upsample(logits, images.shape[1:3])
        top, classes = up.max(dim=1)
        # max softmax = 1 / sum(exp(score - max score)), as the Predictor computes it
        confidence = torch.exp(up - top.unsqueeze(1)).sum(dim=1).reciprocal()
        return classes.to(torch.uint8), (confidence * 255).round().to(torch.uint8)


class OpenVinoEngine:
    """The model converted to OpenVINO (cached on disk by model version and OpenVINO version,
    so a second run does not convert again), compiled for the CPU with dynamic batch, height
    and width: one compiled model serves a run of mixed sizes. Two models: ``maps`` for images
    labeled at the size the model sees (most of them), the logits for the rest (downscaled
    images, tiles), each converted on first use.

    Each image is its own inference request, ``STREAMS`` of them in flight, each stream on its
    share of the cores. On the 2-core AVX-512 machine this ran the bench model at 23.4 img/s
    against 19.9 for one batch of two on every core; and beside a busy region tracer, at 15.0
    against 10.9 while the tracer kept its pace: a stream that another process interrupts
    holds up only its own image, where one request over every core waits for its slowest."""

    name: Engine = "openvino"

    def __init__(
        self,
        model: DeepLab,
        meta: ModelMeta,
        *,
        precision: Precision | None,
        cache_dir: Path | None,
    ) -> None:
        self.device = torch.device("cpu")
        self._config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(STREAMS)}
        if precision is not None:
            self._config["INFERENCE_PRECISION_HINT"] = _OV_PRECISIONS[precision]
        self._asked, self._cache_dir, self._meta = precision, cache_dir, meta
        self._modules: dict[str, nn.Module] = {
            "maps": _Maps(model.eval().cpu(), meta),
            "logits": _Normalized(model.eval().cpu(), meta),
        }
        self._compiled: dict[str, tuple[Any, Any]] = {}
        compiled, _ = self._model("maps")
        chosen = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.precision: Precision = _FROM_OV.get(chosen, "float32")

    def __call__(self, batch: np.ndarray) -> torch.Tensor:
        return torch.cat(self.logits_each(list(batch)))

    def logits_each(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Each HxWx3 image's 1 x C x h x w float logits."""
        return [torch.from_numpy(out[0].astype(np.float32)) for out in self._each("logits", images)]

    def maps_each(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each image's class map and confidence (uint8, H x W) at its own size."""
        return [(out[0][0], out[1][0]) for out in self._each("maps", images)]

    def _each(self, kind: str, images: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Every image's outputs, in order; a request takes the next image as soon as it is
        free, so one slow image holds up no other."""
        _, queue = self._model(kind)
        outputs: list[list[np.ndarray]] = [[] for _ in images]

        def done(request: Any, i: int) -> None:
            outputs[i] = [np.array(tensor.data) for tensor in request.output_tensors]

        queue.set_callback(done)
        try:
            for i, image in enumerate(images):
                queue.start_async(np.ascontiguousarray(image[None]), i)
        finally:
            queue.wait_all()  # none left running into the next call, even after an error
        if missing := [i for i, out in enumerate(outputs) if not out]:
            raise EngineError(
                f"OpenVINO returned nothing for {len(missing)} of {len(images)} images"
            )
        return outputs

    def _model(self, kind: str) -> tuple[Any, Any]:
        """The compiled model and its queue of inference requests, one per stream."""
        if kind not in self._compiled:
            ov = openvino_module()
            converted = openvino_model(self._modules[kind], kind, self._meta, self._cache_dir)
            try:
                compiled = ov.Core().compile_model(converted, "CPU", self._config)
            except RuntimeError as exc:
                raise EngineError(
                    f"OpenVINO cannot run at {self._asked} on this CPU: {exc}"
                ) from exc
            self._compiled[kind] = (compiled, ov.AsyncInferQueue(compiled, STREAMS))
        return self._compiled[kind]


def openvino_missing() -> str | None:
    """Why the OpenVINO engine cannot load here, or None when it can."""
    if importlib.util.find_spec("openvino") is None:
        return "the openvino package is not installed"
    try:
        openvino_module()
    except EngineError as exc:
        return str(exc)
    return None


def openvino_model(module: nn.Module, kind: str, meta: ModelMeta, cache_dir: Path | None) -> Any:
    """``module`` (one of the engine's: uint8 NHWC in) as an OpenVINO model with dynamic batch,
    height and width; converted once and kept under ``cache_dir/openvino`` (weights at full
    precision: the engine picks its own)."""
    ov = openvino_module()
    version = re.sub(r"[^\w.-]+", "_", ov.__version__)
    path = (
        None
        if cache_dir is None
        else cache_dir / "openvino" / f"{meta.model_version}-{version}-{kind}" / "model.xml"
    )
    if path is not None and path.exists():
        return ov.Core().read_model(path)
    start = time.perf_counter()
    example = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings():
        # OpenVINO traces the module; torch warns that tracing is deprecated, every time.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace", category=FutureWarning)
        converted = ov.convert_model(module, example_input=example)
    converted.reshape([-1, -1, -1, 3])
    log.info(
        "converted %s (%s) to OpenVINO in %.1f s",
        meta.model_version,
        kind,
        time.perf_counter() - start,
    )
    if path is not None:
        _save_whole(ov, converted, path)
    return converted


def timings(
    engines: dict[str, Callable[[_Probe], object]], probe: _Probe, *, rounds: int = 3
) -> dict[str, float]:
    """Median milliseconds per call of each engine on ``probe``, after one warm-up each,
    rounds alternated so a busy moment does not favour one of them."""
    times: dict[str, list[float]] = {name: [] for name in engines}
    with torch.inference_mode():
        for run in engines.values():
            run(probe)
        for _ in range(rounds):
            for name, run in engines.items():
                start = time.perf_counter()
                run(probe)
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(ms) for name, ms in times.items()}


def _save_whole(ov: Any, converted: Any, path: Path) -> None:
    """Written in a temp folder beside it, then renamed: a reader finds the whole model or
    none, and two runs converting at once both end with one."""
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=path.parent.parent))
    try:
        ov.save_model(converted, staging / path.name, compress_to_fp16=False)
        with contextlib.suppress(OSError):  # another run got there first: its copy is the same
            staging.replace(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def openvino_module() -> Any:
    """The openvino package, or EngineError saying why it does not load.

    Its usage telemetry stays off: left on, every import counts a use in a file under the
    user's home and sends it to an analytics service from a forked copy of this process, torch's
    threads and all, where prelabel promises to run offline. OpenVINO's tools run without it
    (they use their own stub) when ``openvino_telemetry`` does not import."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError as exc:  # installed but its libraries do not load on this machine
        raise EngineError(f"openvino does not load here ({exc})") from exc
    return openvino
