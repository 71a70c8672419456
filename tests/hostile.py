"""A folder of hostile and odd image files, with what each one must become in a run.

Every file is made here from known pixels or known bytes, so the expectations (size, frames,
refusal reason) come from how the file was built, not from what the decoder says.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
SMALL = (24, 16)  # width, height of most good images: small, and not square


@dataclass(frozen=True, slots=True)
class Good:
    width: int  # of the image as people see it (after EXIF orientation)
    height: int
    frames: int = 1


@dataclass(frozen=True, slots=True)
class Bad:
    reason: str  # a phrase the refusal must contain


def png_header_only(width: int, height: int, rows: int = 0) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` 8-bit RGB pixels but whose IDAT holds only
    ``rows`` rows (of zeros, which compress about 1000:1): a decoder that trusts the header
    allocates the whole image and fills ``rows`` rows of it before it finds the data short."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    stream = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then the row's samples
    idat = b"".join(stream.compress(row) for _ in range(rows)) + stream.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _pattern(width: int, height: int) -> np.ndarray:
    """Smooth colours with a bright top-left corner: varied enough to give the model something."""
    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], -1)
    a[: height // 2, : width // 2] = (250, 240, 20)
    return a.astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _rgb(size: tuple[int, int] = SMALL) -> Image.Image:
    return Image.fromarray(_pattern(*size))


def _good_files() -> dict[str, tuple[bytes, Good]]:
    w, h = SMALL
    rgb = _rgb()
    grey16 = Image.fromarray(_pattern(w, h)[..., 0].astype(np.uint16) * 257)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    frames = [Image.new("RGB", SMALL, c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    files: dict[str, tuple[bytes, Good]] = {
        "rgb.png": (_encode(rgb, "PNG"), Good(w, h)),
        "cmyk.jpg": (_encode(rgb.convert("CMYK"), "JPEG"), Good(w, h)),
        "grey16.png": (_encode(grey16, "PNG"), Good(w, h)),
        "palette.png": (_encode(palette, "PNG"), Good(w, h)),
        "palette-transparent.png": (_encode(palette, "PNG", transparency=0), Good(w, h)),
        "la.png": (_encode(rgb.convert("LA"), "PNG"), Good(w, h)),
        "rgba.png": (_encode(rgb.convert("RGBA"), "PNG"), Good(w, h)),
        "animated.gif": (
            _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50),
            Good(w, h, frames=3),
        ),
        "pages.tiff": (
            _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:2]),
            Good(w, h, frames=2),
        ),
        "one-pixel.png": (_encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), Good(1, 1)),
        "wide-4000x8.png": (_encode(_rgb((4000, 8)), "PNG"), Good(4000, 8)),
        "with spaces.png": (_encode(rgb, "PNG"), Good(w, h)),
        "café 日本.png": (_encode(rgb, "PNG"), Good(w, h)),
        "<img src=x onerror=alert(1)>.png": (_encode(rgb, "PNG"), Good(w, h)),
        "png-bytes.jpg": (_encode(rgb, "PNG"), Good(w, h)),  # decoded by content, not name
    }
    for orientation in range(1, 9):
        exif = rgb.getexif()
        exif[EXIF_ORIENTATION] = orientation
        # The EXIF standard: orientations 5 to 8 store the image with its axes swapped.
        shown = (h, w) if orientation >= 5 else (w, h)
        files[f"orientation-{orientation}.jpg"] = (_encode(rgb, "JPEG", exif=exif), Good(*shown))
    return files


def _bad_files() -> dict[str, tuple[bytes, Bad]]:
    jpeg = _encode(_rgb((64, 48)), "JPEG")
    png = _encode(_rgb((64, 48)), "PNG")
    random = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    unreadable = "not a readable image"
    refused = "not an image in an accepted format"
    return {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], Bad(unreadable)),
        "truncated.png": (png[: len(png) // 2], Bad(unreadable)),
        "empty.png": (b"", Bad("empty file")),
        "text.jpg": (b"Dear reviewer,\nthis is a letter, not a photo.\n", Bad(refused)),
        "random.png": (random, Bad(refused)),
        # 40000x40000 in the header (4.8 GB decoded); 1024 rows (123 MB) in a 120 kB file.
        "huge-header.png": (
            png_header_only(40000, 40000, rows=1024),
            Bad("40000x40000 px is over"),
        ),
        # Valid images in formats Pillow reads but the allow-list leaves out.
        "icon.png": (_encode(_rgb((32, 32)), "ICO"), Bad(refused)),
        "targa.png": (_encode(_rgb(), "TGA"), Bad(refused)),
    }


def build(folder: Path) -> tuple[dict[str, Good], dict[str, Bad]]:
    """Write every case into ``folder``; return the good and bad ones by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    good = _good_files()
    bad = _bad_files()
    for name, (data, _) in {**good, **bad}.items():
        (folder / name).write_bytes(data)
    return {n: g for n, (_, g) in good.items()}, {n: b for n, (_, b) in bad.items()}
