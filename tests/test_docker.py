"""The docker/ files, checked statically (no Docker daemon in CI): pinned versions that agree,
a GPU reservation for the worker, a non-root worker, and no secret written into them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

DOCKER = Path(__file__).parents[1] / "docker"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return loaded


def dockerfile_args() -> dict[str, str]:
    text = (DOCKER / "worker.Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE))


def test_every_image_is_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: {image} has no version in its tag"
    for line in (DOCKER / "worker.Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            assert re.fullmatch(r"FROM [\w./-]+:\d[\w.-]*( AS \w+)?", line), line


def test_worker_and_server_run_the_same_prefect() -> None:
    services = compose()["services"]
    server_tag = services["prefect-server"]["image"].split(":")[1]
    worker_version = services["worker"]["build"]["args"]["PREFECT_VERSION"]
    assert server_tag.startswith(f"{worker_version}-")
    assert dockerfile_args()["PREFECT_VERSION"] == worker_version
    assert "prefect==${PREFECT_VERSION}" in (DOCKER / "worker.Dockerfile").read_text()


def test_worker_reserves_a_gpu_and_reaches_server_and_store() -> None:
    worker = compose()["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert set(worker["depends_on"]) == {"prefect-server", "minio"}
    server = compose()["services"]["prefect-server"]
    assert "postgresql+asyncpg://" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]


def test_no_secret_is_written_in_the_files() -> None:
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert str(value).startswith("${"), f"{name}.{key} holds a literal secret"


def test_worker_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER (\S+)$", (DOCKER / "worker.Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
