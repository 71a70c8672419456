"""Image bytes to the RGB array the model sees, oriented as people see the image.

Only an allow-list of formats is opened, the pixel count is checked from the header before any
pixel is decoded (against our limit, or Pillow's where that is lower), EXIF orientation is
applied exactly once, and every PIL mode has an explicit conversion to RGB (no silent
``convert("RGB")`` on 16-bit data, which would clip it).
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.errors import PrelabelError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees
_TURNS = {2, 3, 4, *_SWAPS_AXES}  # the orientations exif_transpose acts on
_EXIF_ORIENTATION = 0x0112


class DecodeError(PrelabelError):
    """One image that cannot be used; the run records it and goes on with the rest."""


@dataclass(frozen=True, slots=True)
class DecodedImage:
    uri: str
    content_hash: str  # sha256 of the file bytes
    width: int  # of the oriented original: the size outputs are written at
    height: int
    pixels: np.ndarray  # H x W x 3 uint8 RGB, what the model sees (maybe downscaled)
    scale: float  # pixels size / original size (1.0 when not downscaled)
    mode: str  # the PIL mode the file decoded to, before conversion to RGB
    frames: int  # > 1 for animations and multi-page files, of which the first frame is used


def is_image_name(name: str) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def decode_image(uri: str, data: bytes, *, max_side: int, max_pixels: int) -> DecodedImage:
    """Decode, orient, convert to RGB and downscale so the longer side is at most ``max_side``."""
    if not data:
        raise DecodeError(f"{uri}: empty file")
    try:
        image = _open(data)
        limit = _pixel_limit(max_pixels)
        if image.width * image.height > limit:
            raise DecodeError(
                f"{uri}: {image.width}x{image.height} px is over the {limit} pixel limit"
            )
        frames = getattr(image, "n_frames", 1)
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        width, height = image.size
        if orientation in _SWAPS_AXES:
            width, height = height, width
        scale = min(1.0, max_side / max(width, height))
        plain = image.format == "JPEG" and image.mode == "RGB" and orientation not in _TURNS
        pixels = _jpeg_pixels(data, image.size) if plain and scale == 1.0 else None
        mode, rgb = image.mode, None
        if pixels is None:
            if image.format == "JPEG" and scale < 1.0:
                # decode at a reduced DCT scale, still >= the target size, before any resize
                image.draft(
                    "RGB",
                    (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                )
            image.load()
            mode = image.mode
            # exif_transpose copies the pixels even when it turns nothing: a quarter of a decode
            rgb = _to_rgb(ImageOps.exif_transpose(image) if orientation in _TURNS else image)
    except DecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise DecodeError(
            f"{uri}: not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})"
        ) from exc
    except Exception as exc:  # a hostile file can make any decoder step raise anything
        raise DecodeError(f"{uri}: not a readable image ({exc})") from exc
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if rgb is not None:
        if rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = np.asarray(rgb, dtype=np.uint8)
    assert pixels is not None  # OpenCV's, else Pillow's
    return DecodedImage(
        uri=uri,
        content_hash=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        pixels=pixels,
        scale=target[0] / width,
        mode=mode,
        frames=frames,
    )


def _jpeg_pixels(data: bytes, size: tuple[int, int]) -> np.ndarray | None:
    """A colour JPEG decoded by OpenCV: the same libjpeg-turbo and the same pixels as Pillow's
    (checked across subsamplings, progressive and odd sizes), written straight into the array,
    where Pillow decodes into 4-byte pixels and then copies them out: 1.0 against 1.8 ms for
    640x480. None when OpenCV cannot (a truncated file, say): Pillow then decodes, and names
    the fault."""
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if pixels is None or pixels.shape != (size[1], size[0], 3):
        return None
    return np.asarray(pixels, np.uint8)


def _open(data: bytes) -> ImageFile.ImageFile:
    """``Image.open(..., formats=ALLOWED_FORMATS)`` without its decompression-bomb check.

    That check runs inside ``open``, before the caller sees the size, and between Pillow's
    ``MAX_IMAGE_PIXELS`` and twice that it only warns. Making one call's warning an error needs
    ``warnings.catch_warnings``, which changes process-wide state (not thread-safe before Python
    3.14), so the header is read here and ``decode_image`` refuses by size itself.
    """
    Image.init()
    prefix = data[:16]
    for fmt in ALLOWED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        claimed = accept is None or accept(prefix)
        if isinstance(claimed, str) or not claimed:
            continue  # a str: recognised, but Pillow lacks support for it
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # Image.open's "not this format after all"
    raise UnidentifiedImageError("cannot identify image file")


def _pixel_limit(max_pixels: int) -> int:
    """Ours, or Pillow's ``MAX_IMAGE_PIXELS`` (read per call) where that is lower: past it, the
    checks Pillow runs while loading (TIFF, GIF, MPO) would warn and go on decoding, so such an
    image is refused here instead, as Pillow's warning is an error for this pipeline."""
    pillow = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow is None else min(max_pixels, pillow)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Explicit per-mode conversion; alpha is composited over white as viewers show it."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(values, 0, 65535) / 257.0  # 16-bit range onto 8 bits, not clipped
        return Image.fromarray(np.round(grey).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        lo, hi = float(values.min()), float(values.max())
        grey = (values - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(values)
        return Image.fromarray(np.round(grey).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV: defined colour conversions
