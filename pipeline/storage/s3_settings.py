"""How to reach an S3 store, as settings: checked and stored without importing boto3.

No setting here can hold a credential (they come from boto3's own chain), so neither
``run.json`` nor a log line can leak one.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    field_validator,
)


def _check_endpoint(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("endpoint_url must be an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "endpoint_url must not hold credentials; give them through the AWS credential chain "
            "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or a role)"
        )
    return value


def _redacted(url: str) -> str:
    """``url`` with any user and password masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not a URL)"
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


class S3Settings(BaseModel):
    """How to reach the store; who is asking is boto3's credential chain's business."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # An S3-compatible server; else boto3's own resolution (AWS_ENDPOINT_URL_S3, ...).
    endpoint_url: Annotated[str, AfterValidator(_check_endpoint)] | None = None
    region: str | None = None  # else AWS_DEFAULT_REGION or the profile's
    addressing_style: Literal["auto", "path", "virtual"] = "auto"  # "path" for most servers
    max_pool_connections: int | None = Field(None, ge=1)  # else sized to the reader threads
    connect_timeout: float = Field(10.0, gt=0)  # seconds
    read_timeout: float = Field(60.0, gt=0)  # seconds
    max_attempts: int = Field(5, ge=1)  # per request, first try included ("standard" retries)

    @field_validator("endpoint_url", mode="wrap")
    @classmethod
    def _hide_credentials(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        """A validation error quotes its input: mask a user:password in the URL before the
        check refuses it, so the secret reaches no terminal or log."""
        return handler(_redacted(value) if isinstance(value, str) else value)
