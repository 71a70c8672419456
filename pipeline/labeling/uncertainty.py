"""How much a reviewer should doubt an image: figures from the confidence map, and one priority.

The priority is the expected share of wrong pixels, 1 - mean max-softmax: for a model whose
confidence is calibrated that is exactly the share of pixels a reviewer will have to fix, so
reviewing in descending priority fixes the most pixels first. The other figures say where the
doubt sits (near boundaries, in speckle) and are recorded for the report and for filtering.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

_BAND = np.ones((5, 5), np.uint8)


@dataclass(frozen=True, slots=True)
class ImageUncertainty:
    mean_confidence: float  # 0..1, max softmax averaged over the image
    low_confidence_share: float  # share of pixels under the low-confidence threshold
    boundary_uncertainty: float  # 1 - mean confidence within 2 px of a class boundary; 0 if none
    fragments: int  # components dropped as smaller than the minimum area: speckle
    review_priority: float  # expected share of wrong pixels: higher is reviewed first


def image_uncertainty(
    class_map: npt.NDArray[np.uint8],
    confidence: npt.NDArray[np.uint8],
    *,
    low_confidence: float,
    fragments: int,
) -> ImageUncertainty:
    mean = float(confidence.mean()) / 255
    low = float(np.count_nonzero(confidence < low_confidence * 255)) / confidence.size
    # Within 2 px (a 5x5 window) of another class: where the window's max and min class differ.
    band = cv2.dilate(class_map, _BAND) != cv2.erode(class_map, _BAND)
    boundary = 1 - float(confidence[band].mean()) / 255 if band.any() else 0.0
    return ImageUncertainty(mean, low, boundary, fragments, review_priority=1 - mean)
