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


def _registered() -> dict[str, Callable[..., nn.Module]]:
    # Importing them registers the variants (they import this module); smp's layout apart.
    import deeplab.builders
    import deeplab.builders_smp  # noqa: F401

    return _BUILDERS


def list_models() -> list[str]:
    return sorted(_registered())


def build_model(name: str, **kwargs: Any) -> nn.Module:
    builders = _registered()
    if name not in builders:
        raise ValueError(f"no model {name!r}; registered: {', '.join(list_models())}")
    return builders[name](**kwargs)
