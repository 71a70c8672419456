"""Synthetic segmentation scenes: the demo model's training data and the tests' images.

A class is a shape with its own material: a hue band and a surface texture, as real classes are
shapes made of their own stuff. Brightness, saturation, shading, size, rotation and position are
drawn independently of the class. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["DEMO_CLASSES", "Scene", "render_scene", "scenes"]

log = logging.getLogger(__name__)

DEMO_CLASSES: tuple[str, ...] = ("background", "disc", "box", "triangle", "ring")
DISC, BOX, TRIANGLE, RING = 1, 2, 3, 4
TEXTURES = {DISC: "plain", BOX: "stripes", TRIANGLE: "checker", RING: "speckle"}
HUES = {DISC: 0.0, BOX: 120.0, TRIANGLE: 220.0, RING: 55.0}  # band centres, degrees
HUE_SPREAD = 20.0  # +- degrees around the centre: bands stay apart

MAX_OBJECTS = 6
SIZE_RANGE = (0.04, 0.40)  # radius or half-size as a fraction of the short side, log-uniform
MIN_CONTRAST = 70.0  # RGB distance from an object's colour to the mean of what it covers
SHIFT = 4  # cv2 fixed-point bits: vertices sit on a 1/16 px grid
ELLIPSE_VERTICES = 96  # chord error under 0.1 px up to a 190 px radius
COARSE = 16  # smooth background fields are built this many times smaller, then upsampled
JPEG_QUALITY = 92

# Inverse normal CDF at 256 evenly spaced quantiles: a random byte per value through this table
# is Gaussian noise at a fifth of the cost of rng.standard_normal.
_NOISE_LUT = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], np.float32)

FloatImage = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]
Contour = npt.NDArray[np.float64]  # Nx2 (x, y) vertices in frame pixels


@dataclass(frozen=True, slots=True)
class Scene:
    """One rendered scene; `mask` is the very raster the objects were painted through."""

    image: npt.NDArray[np.uint8]  # HxWx3 RGB
    mask: npt.NDArray[np.uint8]  # HxW class ids, positions in DEMO_CLASSES


def scenes(seed: int, count: int, *, height: int, width: int) -> Iterator[Scene]:
    """The same seed gives the same scenes, byte for byte, in the same order."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        yield render_scene(rng, height=height, width=width)


def render_scene(rng: np.random.Generator, *, height: int, width: int) -> Scene:
    """Objects are painted back to front; each overwrites image and mask through one raster, so
    later objects occlude earlier ones and the mask is exactly what was drawn."""
    if height < 8 or width < 8:
        raise ValueError(f"scene size {width}x{height} is under the 8x8 minimum")
    image = _background(rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        class_id = int(rng.integers(1, len(DEMO_CLASSES)))
        _paint(rng, image, mask, class_id, _outline(rng, class_id, height=height, width=width))
    return Scene(image=_finish(rng, image), mask=mask)


def _background(rng: np.random.Generator, height: int, width: int) -> FloatImage:
    """A muted two-colour gradient with low-frequency colour blobs, sometimes a faint pattern."""
    coarse_h, coarse_w = max(2, height // COARSE), max(2, width // COARSE)
    ends = _muted_colours(rng, 2)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (
        np.linspace(0, np.cos(theta), coarse_w)[None, :]
        + np.linspace(0, np.sin(theta), coarse_h)[:, None]
    )
    ramp = (ramp - ramp.min()) / np.ptp(ramp)  # |cos| + |sin| >= 1, never zero
    field = ends[0] + ramp[..., None] * (ends[1] - ends[0])
    blobs = rng.normal(0, rng.uniform(4, 24), (*rng.integers(2, 6, size=2), 3))
    field += cv2.resize(blobs, (coarse_w, coarse_h), interpolation=cv2.INTER_CUBIC)
    image: FloatImage = cv2.resize(
        field.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    if rng.random() < 0.35:
        kind = "stripes" if rng.random() < 0.5 else "checker"
        pattern = _pattern(rng, kind, (height, width), period=rng.uniform(6, 32))
        image += pattern[..., None] * np.float32(rng.uniform(4, 14))
    return image


def _muted_colours(rng: np.random.Generator, count: int) -> npt.NDArray[np.float64]:
    """Mostly greyish colours, occasionally saturated, as walls, floors and skies are."""
    grey = rng.uniform(30, 225, (count, 1))
    saturation = rng.uniform(0, 1, (count, 1)) ** 2
    return grey + (rng.uniform(0, 255, (count, 3)) - grey) * saturation


def _outline(rng: np.random.Generator, class_id: int, *, height: int, width: int) -> list[Contour]:
    """Contours of one object, filled even-odd: a ring's second contour is its hole."""
    size = max(3.0, min(height, width) * np.exp(rng.uniform(*np.log(SIZE_RANGE))))
    if class_id == DISC:
        aspect = 1.0 if rng.random() < 0.4 else rng.uniform(0.45, 1.0)
        local = [_ellipse(size, size * aspect)]
    elif class_id == BOX:
        half_w, half_h = size, size * rng.uniform(0.35, 1.0)
        local = [
            np.array([(-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)])
        ]
    elif class_id == TRIANGLE:
        # Vertex gaps of 60 degrees or more keep every corner near 30 degrees or wider.
        gaps = np.radians(60 + 180 * rng.dirichlet(np.ones(3)))
        angles = np.cumsum(gaps)
        radii = size * rng.uniform(0.75, 1.0, 3)
        local = [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]
    else:
        aspect = rng.uniform(0.6, 1.0)
        # The hole keeps at least 1.5 px on its short axis, so even small rings have one.
        hole = max(rng.uniform(0.35, 0.7), 1.5 / (size * aspect))
        local = [_ellipse(size, size * aspect), _ellipse(size * hole, size * aspect * hole)]
    theta = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    center = rng.uniform((0, 0), (width, height))
    return [contour @ rotation + center for contour in local]


def _ellipse(semi_x: float, semi_y: float) -> Contour:
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return np.stack([semi_x * np.cos(t), semi_y * np.sin(t)], axis=1)


def _paint(
    rng: np.random.Generator,
    image: FloatImage,
    mask: npt.NDArray[np.uint8],
    class_id: int,
    contours: list[Contour],
) -> None:
    """Rasterise once with LINE_8 and use that raster for both image and mask; work happens in
    the object's clipped bounding box only."""
    height, width = mask.shape
    points = np.concatenate(contours)
    x0, y0 = np.maximum(np.floor(points.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(points.max(axis=0)).astype(int) + 1, (width, height))
    if x1 <= x0 or y1 <= y0:
        return
    raster = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fixed = [np.round((c - (x0, y0)) * (1 << SHIFT)).astype(np.int32) for c in contours]
    cv2.fillPoly(raster, fixed, 1, lineType=cv2.LINE_8, shift=SHIFT)
    if not raster.any():
        return
    view = image[y0:y1, x0:x1]
    under = np.array(cv2.mean(view, mask=raster)[:3])
    fill = _object_fill(rng, raster.shape, under=under, class_id=class_id)
    cv2.copyTo(fill, raster, view)  # writes into the view
    np.copyto(mask[y0:y1, x0:x1], class_id, where=raster.view(bool))


def _object_fill(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    under: npt.NDArray[np.float64],
    class_id: int,
) -> FloatImage:
    """A contrasting colour of the class's hue, linear shading and the class's texture; shading
    and texture are zero-mean, so the contrast holds for the object on average."""
    colour = _contrasting_colour(rng, under, hue=HUES[class_id])
    texture = TEXTURES[class_id]
    height, width = shape
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.arange(width, dtype=np.float32) * np.float32(np.cos(theta))
    ramp = (
        ramp[None, :] + (np.arange(height, dtype=np.float32) * np.float32(np.sin(theta)))[:, None]
    )
    shade = (ramp - ramp.mean()) * np.float32(rng.uniform(-50, 50) / max(height, width, 1))
    fill: FloatImage = shade[..., None] + colour.astype(np.float32)
    if texture != "plain":
        direction = rng.normal(size=3)
        delta = direction / np.linalg.norm(direction) * rng.uniform(25, 60)
        pattern = _pattern(rng, texture, shape, period=rng.uniform(2, 8))
        fill += pattern[..., None] * delta.astype(np.float32)
    return fill


def _contrasting_colour(
    rng: np.random.Generator, under: npt.NDArray[np.float64], *, hue: float
) -> npt.NDArray[np.float64]:
    """The first of eight random colours of the hue band at least MIN_CONTRAST from `under`, else
    the farthest; drawing a fixed eight keeps the random stream independent of the image."""
    hues = rng.uniform(hue - HUE_SPREAD, hue + HUE_SPREAD, 8) % 360
    saturation = rng.uniform(0.55, 1.0, 8)
    value = rng.uniform(0.45, 1.0, 8) * 255
    candidates = _hsv_to_rgb(hues, saturation, value)
    distance = np.linalg.norm(candidates - under, axis=1)
    far = distance >= MIN_CONTRAST
    chosen: npt.NDArray[np.float64] = candidates[
        int(np.argmax(far)) if far.any() else int(np.argmax(distance))
    ]
    return chosen


def _hsv_to_rgb(hue: Floats, saturation: Floats, value: Floats) -> Floats:
    """Vectorised HSV (degrees, 0..1, 0..255) to RGB rows."""
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] / 60) % 6
    ramp = np.clip(np.minimum(k, 4 - k), 0, 1)
    rgb: Floats = value[:, None] * (1 - saturation[:, None] * ramp)
    return rgb


def _pattern(
    rng: np.random.Generator, kind: str, shape: tuple[int, int], *, period: float
) -> FloatImage:
    """Stripes, checker or speckle in [-0.5, 0.5], at a random angle and phase."""
    if kind == "speckle":
        speckle: FloatImage = rng.random(shape, dtype=np.float32) - np.float32(0.5)
        return speckle
    height, width = shape
    theta = rng.uniform(0, np.pi)
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    u = xs * cos + ys * sin + np.float32(rng.uniform(0, period))
    if kind == "stripes":
        stripes: FloatImage = np.sin(u * np.float32(2 * np.pi / period)) * np.float32(0.5)
        return stripes
    v = ys * cos - xs * sin
    checker: FloatImage = (np.floor(u / period) + np.floor(v / period)) % 2 - np.float32(0.5)
    return checker


def _finish(rng: np.random.Generator, image: FloatImage) -> npt.NDArray[np.uint8]:
    """Camera-like softness, sensor noise and exposure, then one saturating cast to uint8."""
    blurred = cv2.GaussianBlur(image, (5, 5), rng.uniform(0.3, 1.0))  # 5 taps: +-2 sigma
    noise = cv2.LUT(np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape), _NOISE_LUT)
    contrast = rng.uniform(0.8, 1.2)
    offset = 128 * (1 - contrast) + rng.uniform(-20, 20)
    out = cv2.addWeighted(blurred, contrast, noise, rng.uniform(2, 8), offset, dtype=cv2.CV_8U)
    return np.asarray(out, dtype=np.uint8)


def _parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"size {text!r} is not WxH, e.g. 640x480")
    return int(width), int(height)


def _main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deeplab.scenes", description="Write synthetic scenes as JPEG images."
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for scene-NNN.jpg")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_parse_size, default=(640, 480), help="WxH, e.g. 640x480")
    parser.add_argument(
        "--masks", action="store_true", help="also write masks/scene-NNN.png class-id masks"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    width, height = args.size
    mask_dir = args.out / "masks"
    (mask_dir if args.masks else args.out).mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes(args.seed, args.count, height=height, width=width)):
        bgr = cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
        _write(args.out / f"scene-{i:03d}.jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if args.masks:
            _write(mask_dir / f"scene-{i:03d}.png", scene.mask, [])
    log.info(
        "wrote %d %dx%d scenes (seed %d) to %s", args.count, width, height, args.seed, args.out
    )


def _write(path: Path, array: cv2.typing.MatLike, params: list[int]) -> None:
    if not cv2.imwrite(str(path), array, params):
        raise OSError(f"{path}: cv2.imwrite could not write it")


if __name__ == "__main__":
    _main()
