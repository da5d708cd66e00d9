"""Dataset integrity checks, in the spirit of nnU-Net's ``verify_dataset_integrity``.

Every check either passes or records a :class:`Problem` (the file and what is wrong with it) in a
:class:`Problems` collector; a converter reports all problems of a source at once by raising
:class:`DataValidationError`, before a prepared client folder is published.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedfms.errors import FedfmsError

AFFINE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file (or folder)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class DataValidationError(FedfmsError, ValueError):
    """Source data refused; the message names each offending file and its problem."""

    def __init__(self, problems: Sequence[Problem], source: str | Path | None = None):
        self.problems = list(problems)
        head = f"{len(self.problems)} problem(s) in {source}" if source else f"{len(self.problems)} problem(s)"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class Problems:
    """Collects problems; :meth:`raise_if_any` turns them into one :class:`DataValidationError`."""

    source: str | Path | None = None
    items: list[Problem] = field(default_factory=list)

    def add(self, path: str | Path, message: str) -> None:
        self.items.append(Problem(str(path), message))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise DataValidationError(self.items, self.source)


def check_not_empty(count: int, source: str | Path, problems: Problems, what: str = "image/mask pairs") -> None:
    """Empty client: nothing to prepare under ``source``."""
    if count == 0:
        problems.add(source, f"empty client: no {what} found")


def check_unique(keys: Iterable[tuple[str, str]], problems: Problems, what: str) -> None:
    """Duplicate ids: ``keys`` are ``(id, path)``; every path sharing an id with another is named."""
    keys = list(keys)
    counts = Counter(k for k, _ in keys)
    for key, path in keys:
        if counts[key] > 1:
            others = [p for k, p in keys if k == key and p != path]
            problems.add(path, f"duplicate {what} {key!r} (also {', '.join(others)})")


def check_unpaired(images: Iterable[str], masks: Iterable[str], problems: Problems) -> None:
    """Images without a mask and masks without an image (each named)."""
    for path in images:
        problems.add(path, "image has no mask of the same name")
    for path in masks:
        problems.add(path, "mask has no image of the same name")


def check_ndim(shape: tuple[int, ...], allowed: Sequence[int], path: str | Path, problems: Problems, what: str) -> bool:
    """Wrong dimensionality: ``shape`` must have one of the ``allowed`` numbers of axes."""
    if len(shape) not in allowed:
        want = " or ".join(f"{n}D" for n in allowed)
        problems.add(path, f"wrong dimensionality: {what} has shape {tuple(shape)}, expected {want}")
        return False
    return True


def check_same_shape(
    image_shape: tuple[int, ...], mask_shape: tuple[int, ...], image: str | Path, mask: str | Path, problems: Problems
) -> bool:
    """Image and mask must cover the same pixels/voxels."""
    if tuple(image_shape) != tuple(mask_shape):
        problems.add(mask, f"shape mismatch: mask {tuple(mask_shape)} vs image {tuple(image_shape)} ({image})")
        return False
    return True


def check_same_affine(image_affine: np.ndarray, mask_affine: np.ndarray, image: str | Path, mask: str | Path, problems: Problems) -> bool:
    """NIfTI geometry: image and label volume must share the voxel-to-world affine."""
    if not np.allclose(image_affine, mask_affine, atol=AFFINE_TOLERANCE):
        delta = float(np.abs(np.asarray(image_affine) - np.asarray(mask_affine)).max())
        problems.add(mask, f"geometry mismatch: affine differs from the image's ({image}) by up to {delta:.4g}")
        return False
    return True


def check_finite(array: np.ndarray, path: str | Path, problems: Problems) -> bool:
    """NaN or Inf values in an image or mask."""
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            problems.add(path, f"{int(np.isnan(array).sum())} NaN and {int(np.isinf(array).sum())} Inf values")
            return False
    return True


def check_label_values(mask: np.ndarray, allowed: Iterable[int], path: str | Path, problems: Problems, hint: str = "") -> bool:
    """Label values outside the declared classes (e.g. value 3 when only 0/1/2 are declared)."""
    allowed = sorted({int(v) for v in allowed})
    if mask.dtype in (np.uint8, np.uint16):  # a histogram is much faster than np.unique here
        values = np.flatnonzero(np.bincount(mask.ravel(), minlength=1))
    else:
        values = np.unique(mask)
    extra = [v.item() for v in values if v not in allowed]
    if extra:
        shown = ", ".join(str(v) for v in extra[:8]) + (" ..." if len(extra) > 8 else "")
        problems.add(path, f"label values {shown} outside the declared labels {allowed}{hint}")
        return False
    return True
