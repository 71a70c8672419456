"""A small client for the parts of Label Studio's REST API that push and pull use.

The API token travels only in the ``Authorization`` header: it is never part of a URL, an
error message or this object's repr, so nothing that prints or logs them can reveal it.
Every failure becomes one ``LabelStudioError`` line that names the URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from pipeline.errors import PrelabelError

__all__ = ["TOKEN_VARIABLES", "LabelStudio", "LabelStudioError", "token_from_env"]

# The SDK's variable first, then the name Label Studio's own docs use.
TOKEN_VARIABLES = ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_TOKEN")
_IMPORT_BATCH = 500  # tasks per import request, so no request grows without bound


class LabelStudioError(PrelabelError):
    """Label Studio could not be reached or refused a request; one line, never the token."""


def token_from_env(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    for name in TOKEN_VARIABLES:
        if env.get(name, "").strip():
            return env[name].strip()
    raise LabelStudioError(f"no API token: set {' or '.join(TOKEN_VARIABLES)}")


class LabelStudio:
    """One server, one token. Use as a context manager, or call ``close``."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 60.0,
        page_size: int = 100,  # listed items per request: tasks with predictions are heavy
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise LabelStudioError(f"{url}: a Label Studio URL starts with http:// or https://")
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {token}"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        self.page_size = page_size

    def __repr__(self) -> str:
        return f"LabelStudio({self.url!r})"

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- projects ---------------------------------------------------------------------------

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled exactly ``title`` (the API's filter matches substrings, any case)."""
        found = [
            project
            for project in self._pages("/api/projects/", {"title": title}, "results")
            if project["title"] == title
        ]
        if len(found) > 1:
            ids = ", ".join(str(project["id"]) for project in found)
            raise LabelStudioError(f"{self.url}: several projects are titled {title!r} ({ids})")
        return found[0] if found else None

    def create_project(self, title: str, label_config: str) -> dict[str, Any]:
        project: dict[str, Any] = self._request(
            "POST", "/api/projects/", json={"title": title, "label_config": label_config}
        )
        return project

    # --- tasks ------------------------------------------------------------------------------

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its predictions, annotations and drafts."""
        query = {"project": project_id, "fields": "all"}
        return list(self._pages("/api/tasks/", query, "tasks"))

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> int:
        """Import tasks (with their predictions); returns how many the server took."""
        imported = 0
        for start in range(0, len(tasks), _IMPORT_BATCH):
            batch = list(tasks[start : start + _IMPORT_BATCH])
            answer = self._request("POST", f"/api/projects/{project_id}/import", json=batch)
            imported += int(answer.get("task_count", 0))
        return imported

    def update_task(self, task_id: int, fields: Mapping[str, Any]) -> None:
        self._request("PATCH", f"/api/tasks/{task_id}/", json=dict(fields))

    def create_prediction(self, task_id: int, prediction: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self._request(
            "POST", "/api/predictions/", json={**prediction, "task": task_id}
        )
        return created

    def delete_prediction(self, prediction_id: int) -> None:
        self._request("DELETE", f"/api/predictions/{prediction_id}/")

    def create_annotation(self, task_id: int, result: Sequence[Any]) -> dict[str, Any]:
        """What a reviewer's submit does: a new annotation with these results."""
        created: dict[str, Any] = self._request(
            "POST", f"/api/tasks/{task_id}/annotations/", json={"result": list(result)}
        )
        return created

    # --- plumbing ---------------------------------------------------------------------------

    def _pages(self, path: str, query: Mapping[str, Any], key: str) -> Iterator[dict[str, Any]]:
        """Items of a paged listing, page by page until its count is reached."""
        page, seen = 1, 0
        while True:
            params = {**query, "page": page, "page_size": self.page_size}
            answer = self._request("GET", path, params=params)
            items = answer.get(key) or []
            total = answer.get("total", answer.get("count", 0))
            yield from items
            seen += len(items)
            if not items or seen >= total:
                return
            page += 1

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        where = f"{method} {self.url}{path}"
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise LabelStudioError(f"{where}: cannot connect ({_reason(exc)})") from None
        except httpx.TimeoutException:
            raise LabelStudioError(f"{where}: no answer in time") from None
        except httpx.HTTPError as exc:
            raise LabelStudioError(f"{where}: {_reason(exc)}") from None
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"{where}: the API token was refused ({response.status_code}); check "
                f"{TOKEN_VARIABLES[0]}, and that the server allows legacy tokens "
                "(LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true)"
            )
        if response.status_code == 404:
            raise LabelStudioError(f"{where}: not found (404); is {self.url} Label Studio?")
        if response.is_error:
            raise LabelStudioError(f"{where}: {response.status_code} {_detail(response)}")
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(
                f"{where}: the answer is not JSON; is {self.url} Label Studio?"
            ) from None


def _reason(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _detail(response: httpx.Response) -> str:
    """Label Studio's own words for a refusal, cut to one short line."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    detail = body.get("validation_errors") or body.get("detail") if isinstance(body, dict) else body
    return " ".join(str(detail).split())[:300]
