"""The run's classes: the model's, or what ``--class-map`` and ``--classes`` make of them.

A class map renames and merges (``cat: animal``, ``dog: animal``); ``classes`` then keeps
the named ones, and every other class joins the background, which yields no regions. The
model's class map is rewritten through a lookup table before regions are traced, so every
record and export speaks the run's classes. A merged class keeps the confidence of the
class the model picked (the largest of its parts'), a lower bound of the merged class's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pipeline.errors import PrelabelError


class ClassMapError(PrelabelError):
    """Classes asked for that the model does not have; the message lists the ones it has."""


@dataclass(frozen=True, slots=True)
class LabelSpace:
    names: tuple[str, ...]  # the run's classes, background first
    lut: npt.NDArray[np.uint8] | None  # the model's class id -> the run's; None: unchanged

    def apply(self, class_map: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        return class_map if self.lut is None else self.lut[class_map]


def label_space(
    model_names: Sequence[str],
    *,
    keep: Sequence[str] | None,
    rename: Mapping[str, str] | None,
    background: int | None,
) -> LabelSpace:
    """The run's classes from the model's, ``rename`` (model name -> run name) applied first,
    then ``keep`` (run names); names are matched exactly."""
    if not keep and not rename:
        return LabelSpace(tuple(model_names), None)
    listed = ", ".join(model_names)
    unknown = [name for name in rename or {} if name not in model_names]
    if unknown:
        raise ClassMapError(f"--class-map: {unknown[0]!r} is not a class of the model ({listed})")
    mapped = [(rename or {}).get(name, name) for name in model_names]
    if background != 0:
        raise ClassMapError(
            "--classes and --class-map need the model's background at class 0 "
            f"(regions.background is {background})"
        )
    missing = [name for name in keep or () if name not in mapped]
    if missing:
        raise ClassMapError(
            f"--classes: {missing[0]!r} is not a class of the model "
            f"({', '.join(dict.fromkeys(mapped))})"
        )
    names = [mapped[0]]
    lut = np.zeros(256, np.uint8)
    for model_id, name in enumerate(mapped):
        if model_id and keep and name not in keep:
            continue  # joins the background (0)
        if name not in names:
            names.append(name)
        lut[model_id] = names.index(name)
    return LabelSpace(tuple(names), lut)
