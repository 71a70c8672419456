"""Hostile and odd inputs: a run labels every good file, refuses every bad one by name and
reason, and goes on; no bad file costs memory in proportion to what its header claims."""

from __future__ import annotations

import io
import math
import os
import shutil
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import RunConfig
from pipeline.labeling.annotate import RunSummary, annotate
from pipeline.labeling.decode import DecodeError, decode_image
from pipeline.storage import LocalStorage
from tests.helpers import make_images, merged
from tests.hostile import Bad, Good, build, png_header_only

LIMITS = {"max_side": 1024, "max_pixels": 10_000_000}
Hostile = tuple[Path, dict[str, Good], dict[str, Bad]]  # the folder, its good and bad files


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory,
) -> Hostile:
    folder = tmp_path_factory.mktemp("hostile") / "in"
    good, bad = build(folder)
    return folder, good, bad


@pytest.fixture(scope="module")
def run(hostile: Hostile, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSummary, RunConfig]:
    folder = hostile[0]
    config = RunConfig(
        source=str(folder), out=str(tmp_path_factory.mktemp("run")), device="cpu", batch_size=4
    )
    return annotate(config), config


def test_every_case_decodes_or_is_refused_by_name_and_reason(
    hostile: Hostile,
) -> None:
    folder, good, bad = hostile
    for name, expected in good.items():
        decoded = decode_image(name, (folder / name).read_bytes(), **LIMITS)
        assert (decoded.width, decoded.height, decoded.frames) == (
            expected.width,
            expected.height,
            expected.frames,
        ), name
    for name, refusal in bad.items():
        with pytest.raises(DecodeError) as err:
            decode_image(name, (folder / name).read_bytes(), **LIMITS)
        assert str(err.value).startswith(f"{name}: {refusal.reason}"), err.value


@pytest.mark.parametrize(("name", "fmt"), [("icon.png", "ICO"), ("targa.png", "TGA")])
def test_a_readable_format_outside_the_allow_list_is_refused(
    hostile: Hostile, name: str, fmt: str
) -> None:
    data = (hostile[0] / name).read_bytes()
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would decode it
    with pytest.raises(DecodeError, match="not an image in an accepted format"):
        decode_image(name, data, **LIMITS)


def test_the_run_labels_the_good_and_records_the_bad(
    hostile: Hostile, run: tuple[RunSummary, RunConfig]
) -> None:
    folder, good, bad = hostile
    summary, config = run
    rows = {r["key"]: r for r in merged(Path(config.out))[0].to_pylist()}
    assert set(rows) == set(good) | set(bad)
    for name, expected in good.items():
        row = rows[name]
        assert row["status"] == "ok", (name, row["error"])
        assert (row["width"], row["height"], row["frames"]) == (
            expected.width,
            expected.height,
            expected.frames,
        ), name
        scale = min(1.0, config.max_side / max(expected.width, expected.height))
        assert (row["model_width"], row["model_height"]) == (
            max(1, round(expected.width * scale)),
            max(1, round(expected.height * scale)),
        ), name
    for name, refusal in bad.items():
        row = rows[name]
        assert row["status"] == "failed", name
        assert row["error"].startswith(f"{folder / name}: {refusal.reason}"), row["error"]
    assert {key for key, _ in summary.failed} == set(bad)
    assert summary.images == len(good) + len(bad)


def test_exif_orientations_5_to_8_swap_width_and_height(
    hostile: Hostile, run: tuple[RunSummary, RunConfig]
) -> None:
    # The stored size comes from the file, the rule from the EXIF standard: 5 to 8 transpose.
    rows = merged(Path(run[1].out))[0].to_pylist()
    sizes = {r["key"]: (r["width"], r["height"]) for r in rows}
    for orientation in range(1, 9):
        name = f"orientation-{orientation}.jpg"
        with Image.open(hostile[0] / name) as stored:
            width, height = stored.size
            assert stored.getexif()[0x0112] == orientation
        assert sizes[name] == ((height, width) if orientation >= 5 else (width, height))


def test_the_cli_lists_the_failed_files_and_exits_3(hostile: Hostile, tmp_path: Path) -> None:
    # The installed command in its own process, as a user runs it (Prefect's ephemeral server).
    folder, good, bad = hostile
    prelabel = Path(sys.executable).parent / "prelabel"
    result = subprocess.run(
        [str(prelabel), "annotate", str(folder), "--out", str(tmp_path / "run"), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert "Traceback" not in output
    assert f"{len(bad)} images failed" in output
    for name, refusal in bad.items():
        assert f"{folder / name}: {refusal.reason}" in output
    for name in good:
        assert f"{folder / name}:" not in output


def test_just_over_pillows_bomb_threshold_is_an_error_not_a_warning() -> None:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and would then decode; here
    # our own limit is higher still, and the image must be refused anyway, with no warning.
    pillow = Image.MAX_IMAGE_PIXELS
    assert pillow is not None
    side = math.isqrt(pillow) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DecodeError) as err:
            decode_image(
                "bomb.png", png_header_only(side, side), max_side=1024, max_pixels=2 * pillow
            )
    assert str(err.value) == f"bomb.png: {side}x{side} px is over the {pillow} pixel limit"


def test_the_pixel_limit_is_per_call_under_threads() -> None:
    # Calls with different limits run at once: each is judged by its own, and none warns.
    data = png_header_only(3000, 3000)  # 9 MP

    def refusal(limit: int) -> str:
        try:
            decode_image(f"{limit}.png", data, max_side=64, max_pixels=limit)
        except DecodeError as exc:
            return str(exc)
        return "decoded"

    limits = [1_000_000 + i for i in range(64)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ThreadPoolExecutor(8) as pool:
            messages = list(pool.map(refusal, limits))
    assert messages == [f"{n}.png: 3000x3000 px is over the {n} pixel limit" for n in limits]


def test_a_huge_header_is_refused_without_a_large_allocation(
    hostile: Hostile,
) -> None:
    # A fresh interpreter, so no other test's allocations set the peak. Pillow's own bomb check
    # is switched off there: our limit alone must stop the 40000x40000 (4.8 GB RGB) image. The
    # address space is capped 1 GiB above what it holds, so a regression fails rather than
    # taking gigabytes from the machine (without the check, the peak rises by some 6 GiB).
    script = """
import resource, sys
from PIL import Image
from pipeline.labeling.decode import DecodeError, decode_image
Image.MAX_IMAGE_PIXELS = None
huge, warm = sys.argv[1], sys.argv[2]
decode_image(warm, open(warm, "rb").read(), max_side=1024, max_pixels=10**8)
status = open("/proc/self/status").read().splitlines()
vm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
soft, hard = (vm_kib + 2**20) * 1024, resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (soft if hard < 0 else min(soft, hard), hard))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(huge, open(huge, "rb").read(), max_side=1024, max_pixels=10**8)
    print("decoded")
except DecodeError as exc:
    print(exc)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    folder = hostile[0]
    huge, warm = folder / "huge-header.png", folder / "rgb.png"
    result = subprocess.run(
        [sys.executable, "-c", script, str(huge), str(warm)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).parents[2],
    )
    message, rise_kib = result.stdout.strip().splitlines()
    assert message == f"{huge}: 40000x40000 px is over the 100000000 pixel limit"
    assert int(rise_kib) < 100 * 1024  # ru_maxrss is in KiB on Linux


def test_a_fifo_and_a_name_that_is_not_utf8_do_not_stop_the_run(tmp_path: Path) -> None:
    """A FIFO would block its reader forever; a name of bytes that are not UTF-8 fit no table
    as they are: the run lists only regular files and keeps such a name in a readable form."""
    folder = tmp_path / "in"
    make_images(folder, 2)
    os.mkfifo(folder / "x.jpg")
    shutil.copyfile(folder / "img-00.png", os.fsencode(folder) + b"/\xff\xfe.png")
    out = tmp_path / "run"
    prelabel = Path(sys.executable).parent / "prelabel"
    result = subprocess.run(
        [str(prelabel), "annotate", str(folder), "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "images labeled │ 3/3" in result.stderr
    rows = merged(out)[0].to_pylist()
    assert [r["key"] for r in rows] == ["\\xff\\xfe.png", "img-00.png", "img-01.png"]
    assert all(r["status"] == "ok" for r in rows)
    assert rows[0]["content_hash"] == rows[1]["content_hash"]  # the bytes behind the odd name
    again = annotate(RunConfig(source=str(folder), out=str(out), device="cpu"))
    assert (again.labeled_now, again.done_before) == (0, 3)


def test_a_read_that_hangs_is_recorded_and_the_shard_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    make_images(folder, 3)
    release = threading.Event()
    read = LocalStorage.read

    def hanging(self: LocalStorage, uri: str) -> bytes:
        if uri.endswith("img-01.png"):
            release.wait(60)  # a mount that stopped answering
        return read(self, uri)

    monkeypatch.setattr(LocalStorage, "read", hanging)
    config = RunConfig(
        source=str(folder), out=str(tmp_path / "run"), device="cpu", read_timeout=0.5
    )
    try:
        summary = annotate(config)
    finally:
        release.set()
    rows = {r["key"]: r for r in merged(tmp_path / "run")[0].to_pylist()}
    assert rows["img-01.png"]["status"] == "failed" and rows["img-01.png"]["retryable"]
    assert (
        rows["img-01.png"]["error"] == f"{folder / 'img-01.png'}: cannot read (no answer in 0.5 s)"
    )
    assert rows["img-00.png"]["status"] == rows["img-02.png"]["status"] == "ok"
    assert summary.failed == (("img-01.png", rows["img-01.png"]["error"]),)
