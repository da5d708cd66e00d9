"""Resizing used both when preparing and when loading: images bilinear, masks nearest.

One implementation (``torch.nn.functional.interpolate``) for both places, so a client prepared at
1024/256 and resized on load gives the same pixels as one prepared at the smaller size from
the stored arrays. Bilinear downsizing is antialiased (like PIL), so thin structures do not alias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: ``torch.nn.functional.interpolate`` settings of every image resize (prepare, load, predict).
BILINEAR = {"mode": "bilinear", "align_corners": False, "antialias": True}


def resize_image_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    """(K, H, W) or (B, K, H, W) float -> same with H = W = ``size`` (bilinear, antialiased)."""
    import torch.nn.functional as F

    if image.shape[-2:] == (size, size):
        return image
    batched = image if image.ndim == 4 else image[None]
    out = F.interpolate(batched, size=(size, size), **BILINEAR)
    return out if image.ndim == 4 else out[0]


def resize_mask_tensor(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) {0,1} -> same at ``size`` (nearest-exact: pixel-centre sampling)."""
    import torch.nn.functional as F

    if mask.shape[-2:] == (size, size):
        return mask
    batched = mask if mask.ndim == 4 else mask[None]
    out = F.interpolate(batched.float(), size=(size, size), mode="nearest-exact").to(mask.dtype)
    return out if mask.ndim == 4 else out[0]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(K, H, W) float32 in [0, 1] -> (K, size, size) float32 in [0, 1]."""
    import torch

    out = resize_image_tensor(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), size)
    return out.clamp_(0.0, 1.0).numpy()


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(C, H, W) bool -> (C, size, size) bool."""
    import torch

    return resize_mask_tensor(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8)), size).numpy().astype(bool)
