"""Intensity normalisation to [0, 1], the paper's rule.

Volumes (and non-8-bit images): clip at the upper percentile (99th: the top 1 % of intensities
are cut), then min-max scale. 8-bit RGB/grey images: divide by 255.
"""

from __future__ import annotations

import numpy as np


def clip_and_scale(array: np.ndarray, upper_percentile: float = 99.0) -> np.ndarray:
    """Any-shape array -> float32 in [0, 1]: clip at ``upper_percentile``, then min-max.

    A constant array (upper bound equal to the minimum) becomes all zeros.
    """
    array = np.asarray(array, dtype=np.float64)  # float32 overflows on a range of 3e38 - (-3e38)
    upper = np.percentile(array, upper_percentile)
    lower = array.min()
    if upper <= lower:
        return np.zeros(array.shape, np.float32)
    return ((np.clip(array, lower, upper) - lower) / (upper - lower)).astype(np.float32)


def image_to_unit(image: np.ndarray, upper_percentile: float = 99.0) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB image -> (K, H, W) float32 in [0, 1], K = 1 or 3.

    uint8 is divided by 255 (the paper's rule for RGB); other dtypes (16-bit, float) are
    percentile-clipped and min-max scaled per image.
    """
    unit = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else clip_and_scale(image, upper_percentile)
    return unit[None] if unit.ndim == 2 else np.ascontiguousarray(np.moveaxis(unit, -1, 0))
