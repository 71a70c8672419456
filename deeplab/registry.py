"""Model builders by name: scripts and checkpoints refer to architectures by these names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[F], F]:
    def add(fn: F) -> F:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is already taken")
        _BUILDERS[name] = fn
        return fn

    return add


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    if name not in _BUILDERS:
        raise ValueError(f"no model {name!r}; registered: {', '.join(list_models())}")
    return _BUILDERS[name](**kwargs)
