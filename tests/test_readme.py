"""Every command the README shows is run, so the README cannot drift from the product.

Commands are taken from the README's ``bash`` blocks and from inline code that starts with
``.venv/bin/``. Each must match an entry of ``COVERED``: run here (the review loop as one
story, against a real Label Studio, on the example images), or run by the test that names
it where it needs what a test here cannot start (Docker, a GPU, a Prefect work pool). A new
command in the README that no entry covers fails the test.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.review.label_studio_api import LabelStudio

if TYPE_CHECKING:
    from tests.label_studio_server import LabelStudioServer

pytest_plugins = ["tests.label_studio_server"]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the environment the tests run in: the README's .venv/bin
TRAIN_STEPS = ["--steps", "3", "--crop", "128"]  # the README's train, minus its minutes


@dataclass(frozen=True)
class Command:
    line: str  # as the README writes it
    words: tuple[str, ...]  # split as a shell splits it, comments dropped


def readme_commands() -> list[Command]:
    """Each command of a ``bash`` block (``&&`` chains split) and each inline ``.venv/bin/``
    command, in README order."""
    text = README.read_text()
    lines: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`(\.venv/bin/[^`]+)`", text.replace("\n", " "))
    commands = []
    for line in lines:
        for part in re.split(r"\s&&\s", line):
            words = tuple(shlex.split(part, comments=True))
            if words:
                commands.append(Command(re.sub(r"\s+#\s.*$", "", part).strip(), words))
    return commands


# README command (a regex over the line) -> where it runs. "here" is this module.
COVERED: dict[str, str] = {
    # Installing: what CI and this test environment did before any test ran.
    r"python3 -m venv \.venv": "here: the environment these tests run in",
    r"\.venv/bin/pip install (\.|'\.\[test\]'|-e '\.\[test\]')": "here: this environment",
    r"\.venv/bin/pytest( -m \"not integration\")?": ".ci/run (checked here)",
    r"\.venv/bin/pytest tests/test_readme\.py": "tests/test_readme.py",
    # A published model needs the internet: its download code runs against a loopback
    # server in tests/labeling/test_zoo.py, and a cached one through annotate there too.
    r"\.venv/bin/prelabel annotate photos --out runs/voc --model torchvision/\S+": (
        "tests/labeling/test_zoo.py"
    ),
    # Labeling and its outputs, the review loop: run here in README order.
    r"\.venv/bin/prelabel .*": "here",
    r"export LABEL_STUDIO_API_KEY=\.\.\.": "here",
    r"python -m deeplab\.demo .*": "here",
    r"\.venv/bin/(ruff check \.|ruff format --check \.|mypy)": "here: in the checkout",
    r"\.venv/bin/python bench/bench_\w+\.py.*": "here: --help",
    r"bash bench/gpu_(wheels|check)\.sh": "here: bash -n (a GPU machine runs them)",
    # Scale-out needs a Prefect server and work-pool workers: tests/flows/test_scale_out.py runs
    # deploy and --executor deployment against a real one, with process workers.
    r"export PREFECT_API_URL=.*": "tests/flows/test_scale_out.py",
    r"prefect worker start .*": "tests/prefect_server.py",
    r"prelabel deploy nightly .*": "tests/flows/test_scale_out.py",
    r"prelabel annotate s3://\S+ --out s3://\S+ --executor deployment": (
        "tests/flows/test_scale_out.py"
    ),
    # No Docker daemon in CI: the compose file and image are checked as files.
    r".*docker compose -f docker/compose\.yaml up -d": "tests/test_docker.py",
}


def _coverage(command: Command) -> str:
    for pattern, where in COVERED.items():
        if re.fullmatch(pattern, command.line):
            return where
    raise AssertionError(f"README command run by no test: {command.line}")


def test_every_readme_command_is_covered() -> None:
    commands = readme_commands()
    assert len(commands) > 20  # the extraction found the README's blocks
    for command in commands:
        where = _coverage(command)
        if not where.startswith("here") and where != ".ci/run (checked here)":
            assert (ROOT / where.split(":")[0]).is_file(), where


def test_the_readme_test_command_is_what_ci_runs() -> None:
    text = README.read_text()
    block = re.search(r"Run the tests:\n\n```bash\n(.*?)\n```", text, flags=re.DOTALL)
    assert block is not None
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == block[1]


def _run(words: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        words, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{shlex.join(words)}\n{done.stdout}\n{done.stderr}"
    return done


def _localized(words: tuple[str, ...]) -> list[str]:
    """The README's ``.venv/bin/X`` is this environment's X; ``python`` its interpreter."""
    first = words[0]
    if first.startswith(".venv/bin/"):
        first = str(BIN / first.removeprefix(".venv/bin/"))
    elif first == "python":
        first = sys.executable
    return [first, *words[1:]]


def _review_everything(server: LabelStudioServer, project: str) -> None:
    """A reviewer accepts every prediction as it is."""
    with LabelStudio(server.url, server.token) as client:
        found = client.find_project(project)
        assert found is not None
        for task in client.tasks(int(found["id"])):
            result = copy.deepcopy(task["predictions"][0]["result"])
            for item in result:
                item.pop("score", None)
            client.create_annotation(task["id"], result)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A folder like a fresh clone's (the examples; ``photos`` holding the same images) and
    an environment with a cache and home of its own."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copytree(ROOT / "examples", tmp_path / "photos")
    for name in ("pyproject.toml", "bench", "deeplab", "pipeline", "flows", "docker", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "PRELABEL"))}
    (tmp_path / "home").mkdir()
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    yield tmp_path, env


@pytest.mark.integration
def test_every_command_run_here_succeeds_in_readme_order(
    label_studio: LabelStudioServer, workspace: tuple[Path, dict[str, str]]
) -> None:
    cwd, env = workspace
    ran: list[str] = []
    for command in readme_commands():
        where = _coverage(command)
        if not where.startswith("here:") and where != "here":
            continue
        if where == "here: the environment these tests run in" or where == "here: this environment":
            continue
        words = _localized(command.words)
        line = command.line
        if line.startswith("export LABEL_STUDIO_API_KEY"):
            env["LABEL_STUDIO_API_KEY"] = label_studio.token
            continue
        words = [label_studio.url if w == "http://localhost:8080" else w for w in words]
        if where == "here: --help":
            words = [*words[:2], "--help"]
        elif where.startswith("here: bash"):
            words = ["bash", "-n", *words[1:]]
        elif command.words[:4] == ("python", "-m", "deeplab.demo", "train"):
            # The demo's own training: a few steps, to a file of its own, not over the model.
            words = [*words[:4], "--out", str(cwd / "demo-check.safetensors"), "--steps", "2"]
        elif command.words[1:2] == ("train",):
            words += TRAIN_STEPS
        done = _run(words, ROOT if where == "here: in the checkout" else cwd, env)
        ran.append(line)
        if command.words[1:2] == ("push",):
            project = command.words[command.words.index("--project") + 1]
            _review_everything(label_studio, project)
        if line.startswith("python -m deeplab.demo evaluate"):
            # The figure the README gives for the bundled model.
            figure = re.search(r"mIoU on 200 fresh 320x320 scenes: (\d\.\d+)", README.read_text())
            assert figure is not None
            assert json.loads(done.stdout)["miou"] == float(figure[1])
    # What the story leaves behind, as the README describes it.
    assert (cwd / "runs/demo/exports/coco.json").is_file()
    assert (cwd / "runs/demo/exports/masks/labelmap.txt").is_file()
    assert (cwd / "runs/v1/exports/report.html").is_file()
    assert len(list((cwd / "reviewed/SegmentationClass").glob("*.png"))) == 8
    models = {
        run: json.loads((cwd / f"runs/{run}/run.json").read_text())["model"] for run in ("v1", "v2")
    }
    assert models["v2"]["ref"] == str(cwd / "tuned.safetensors")
    for run, model in models.items():
        assert (cwd / f"runs/{run}/evaluations/{model['model_version']}.md").is_file()
    assert len(ran) >= 20, ran
