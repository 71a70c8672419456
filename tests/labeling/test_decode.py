"""Decoding: orientation, every PIL mode to RGB, resolution policy, refusals with reasons."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from deeplab.scenes import scenes
from pipeline.labeling.decode import DecodeError, decode_image, is_image_name

LIMITS = {"max_side": 1024, "max_pixels": 10_000_000}


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _asymmetric(width: int = 40, height: int = 30) -> Image.Image:
    """Red top-left quadrant on blue: any flip or rotation moves the red corner."""
    a = np.zeros((height, width, 3), np.uint8)
    a[...] = (0, 0, 255)
    a[: height // 2, : width // 2] = (255, 0, 0)
    return Image.fromarray(a)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_once(orientation: int) -> None:
    stored = _asymmetric()
    exif = stored.getexif()
    exif[0x0112] = orientation
    data = _encode(stored, "PNG", exif=exif)
    decoded = decode_image("o.png", data, **LIMITS)
    expected = np.asarray(
        stored.transpose(_pil_transpose(orientation)) if orientation > 1 else stored
    )
    assert (decoded.width, decoded.height) == (expected.shape[1], expected.shape[0])
    assert np.array_equal(decoded.pixels, expected)


def _pil_transpose(orientation: int) -> Image.Transpose:
    return {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }[orientation]


def test_orientation_6_puts_the_red_corner_top_right() -> None:
    # Independent of PIL's transpose table: orientation 6 means "rotate 90 degrees clockwise".
    stored = _asymmetric(40, 30)
    exif = stored.getexif()
    exif[0x0112] = 6
    decoded = decode_image("o.png", _encode(stored, "PNG", exif=exif), **LIMITS)
    assert (decoded.width, decoded.height) == (30, 40)
    assert tuple(decoded.pixels[0, -1]) == (255, 0, 0)
    assert tuple(decoded.pixels[-1, 0]) == (0, 0, 255)


@pytest.mark.parametrize(
    ("image", "fmt", "expected_rgb"),
    [
        (Image.new("L", (8, 8), 77), "PNG", (77, 77, 77)),  # grey
        (Image.new("I;16", (8, 8), 65535), "PNG", (255, 255, 255)),  # 16-bit grey, full range
        (Image.new("I;16", (8, 8), 257 * 100), "PNG", (100, 100, 100)),  # scaled, not clipped
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", None),  # red in CMYK
        (Image.new("RGBA", (8, 8), (10, 20, 30, 255)), "PNG", (10, 20, 30)),  # opaque alpha
        (Image.new("RGBA", (8, 8), (10, 20, 30, 0)), "PNG", (255, 255, 255)),  # transparent: white
        (Image.new("LA", (8, 8), (50, 255)), "PNG", (50, 50, 50)),
        (Image.new("1", (8, 8), 1), "PNG", (255, 255, 255)),  # bilevel
        (
            Image.new("RGB", (8, 8), (1, 2, 3)).convert("P", palette=Image.Palette.ADAPTIVE),
            "PNG",
            (1, 2, 3),
        ),  # palette
    ],
)
def test_every_mode_becomes_rgb_uint8(
    image: Image.Image, fmt: str, expected_rgb: tuple[int, int, int] | None
) -> None:
    decoded = decode_image(f"m.{fmt.lower()}", _encode(image, fmt), **LIMITS)
    assert decoded.pixels.shape == (8, 8, 3) and decoded.pixels.dtype == np.uint8
    if expected_rgb is None:
        r, g, b = decoded.pixels[4, 4].tolist()
        assert r > 200 and g < 60 and b < 60
    else:
        assert tuple(decoded.pixels[4, 4].tolist()) == expected_rgb


def test_first_frame_of_an_animation_is_used_and_recorded() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image("a.gif", buffer.getvalue(), **LIMITS)
    assert decoded.frames == 3
    assert tuple(decoded.pixels[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((4000, 3000), 1024, (1024, 768)),  # downscaled, aspect kept
        ((3000, 4000), 1024, (768, 1024)),
        ((640, 480), 1024, (640, 480)),  # never upscaled
        ((4000, 8), 1000, (1000, 2)),  # extreme aspect stays at least 1 px
    ],
)
def test_resolution_policy_downscales_the_longer_side(
    size: tuple[int, int], max_side: int, expected: tuple[int, int]
) -> None:
    data = _encode(Image.new("RGB", size, (9, 9, 9)), "JPEG")
    decoded = decode_image("big.jpg", data, max_side=max_side, max_pixels=10**9)
    assert (decoded.width, decoded.height) == size
    assert (decoded.pixels.shape[1], decoded.pixels.shape[0]) == expected
    assert decoded.scale == pytest.approx(expected[0] / size[0])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"plain text, not an image", "not an image in an accepted format"),
        (_encode(Image.new("RGB", (64, 64)), "PNG")[:60], "not a readable image"),  # truncated
        (_encode(Image.new("RGB", (64, 64)), "PDF"), "not an image in an accepted format"),
    ],
)
def test_bad_files_raise_decode_errors_naming_the_file(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as err:
        decode_image("scans/0042.jpg", data, **LIMITS)
    assert str(err.value).startswith("scans/0042.jpg: ")


@pytest.mark.parametrize("size", [(641, 479), (97, 131), (1, 1)])
@pytest.mark.parametrize("subsampling", [0, 1, 2])
@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_pixels_are_pillows(
    size: tuple[int, int], subsampling: int, progressive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Colour JPEGs at full size are decoded by OpenCV: the pixels must be Pillow's."""
    width, height = size
    scene = next(scenes(5, 1, height=max(height, 8), width=max(width, 8))).image[:height, :width]
    data = _encode(
        Image.fromarray(scene), "JPEG", quality=90, subsampling=subsampling, progressive=progressive
    )
    calls = []
    real = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(1) or real(*a))
    decoded = decode_image("s.jpg", data, **LIMITS)
    assert calls
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decoded.pixels.dtype == np.uint8 and np.array_equal(decoded.pixels, expected)
    assert (decoded.width, decoded.height, decoded.mode, decoded.scale) == (width, height, "RGB", 1)


def test_a_truncated_jpeg_is_refused_with_pillows_reason() -> None:
    data = _encode(Image.fromarray(next(scenes(6, 1, height=64, width=64)).image), "JPEG")
    with pytest.raises(DecodeError, match=r"not a readable image \(Truncated"):
        decode_image("cut.jpg", data[: len(data) // 2], **LIMITS)


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = _encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(DecodeError, match="5000x5000 px is over the 1000000 pixel limit"):
        decode_image("huge.png", data, max_side=1024, max_pixels=1_000_000)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.jpg", True),
        ("b.JPEG", True),
        ("c.png", True),
        ("d.tif", True),
        ("e.txt", False),
        (".jpg", False),
        ("noext", False),
        ("f.jpg.json", False),
    ],
)
def test_image_names_are_recognised_by_extension(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected
