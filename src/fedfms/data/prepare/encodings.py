"""Mask encodings: from the values stored in a mask file to (C, H, W) multi-label class masks.

Kinds:

- ``levels``: each stored value maps to the set of classes it belongs to. Covers palette
  masks (Drishti-GS 0/1/2), grey or RGB level masks (0/128/255), inverted binary masks
  (prostate slices: 0 = prostate, 255 = background) and NIfTI label maps (FeTS: 4 -> tumour,
  1 and 2 -> background). A value that is not declared is an error, never silently background.
- ``threshold``: value > threshold is foreground (``invert``: value < threshold), for lossy
  JPEG masks (DRIONS-DB, threshold 127). One class.
- ``nonzero``: any non-zero value is foreground: binary masks and instance-label masks
  (nuclei). One class.

Classes are multi-label: with ``["disc", "cup"]`` a cup pixel is in both channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedfms.data.validate import Problems, check_label_values

EncodingKind = Literal["levels", "threshold", "nonzero"]


@dataclass(frozen=True)
class MaskEncoding:
    """How stored mask values become class channels; ``levels`` maps value -> 0-based classes."""

    kind: EncodingKind
    levels: dict[int, tuple[int, ...]] = field(default_factory=dict)
    threshold: float = 127.0
    invert: bool = False

    def decode(self, mask: np.ndarray, num_classes: int, path: str | Path, problems: Problems) -> np.ndarray | None:
        """(H, W) stored values -> (C, H, W) bool, or ``None`` with a problem recorded."""
        if self.kind != "levels" and num_classes != 1:
            raise ValueError(f"encoding {self.kind!r} gives one class, not {num_classes}")
        if self.kind == "threshold":
            return (mask < self.threshold if self.invert else mask > self.threshold)[None]
        if self.kind == "nonzero":
            return (mask != 0)[None]
        if np.issubdtype(mask.dtype, np.floating) and not np.array_equal(mask, np.rint(mask)):
            problems.add(path, "non-integer label values in a mask")
            return None
        if not check_label_values(mask, self.levels, path, problems, hint=" (see the mask encoding)"):
            return None
        out = np.zeros((num_classes, *mask.shape), dtype=bool)
        for c in range(num_classes):
            values = [v for v, classes in self.levels.items() if c in classes]
            out[c] = np.isin(mask, values)
        return out

    def describe(self, class_names: list[str]) -> dict[str, Any]:
        """JSON-friendly description for the manifest's preprocessing settings."""
        if self.kind == "levels":
            return {"kind": "levels", "levels": {str(v): [class_names[c] for c in cl] for v, cl in self.levels.items()}}
        if self.kind == "threshold":
            return {"kind": "threshold", "threshold": self.threshold, "invert": self.invert}
        return {"kind": "nonzero"}


def binary_encoding(foreground_value: int = 255, background_value: int | None = None) -> MaskEncoding:
    """Two-valued mask; ``foreground_value=0`` for inverted masks (background then defaults to 255)."""
    if background_value is None:
        background_value = 255 if foreground_value == 0 else 0
    return MaskEncoding("levels", {foreground_value: (0,), background_value: ()})


def label_map_encoding(num_classes: int) -> MaskEncoding:
    """Default label map: 0 background, value k -> class k (k = 1..C)."""
    return MaskEncoding("levels", {0: (), **{k: (k - 1,) for k in range(1, num_classes + 1)}})


def parse_levels(spec: str, class_names: list[str]) -> dict[int, tuple[int, ...]]:
    """``"0=,1=disc,2=disc+cup"`` (or ``"4:1"``, 1-based class numbers) -> value -> 0-based classes.

    Right-hand side: class names or 1-based class numbers joined by ``+``; empty, ``0`` or
    ``bg`` means background.
    """
    levels: dict[int, tuple[int, ...]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        sep = "=" if "=" in item else ":"
        value, _, rhs = item.partition(sep)
        try:
            key = int(value)
        except ValueError:
            raise ValueError(f"levels {spec!r}: {value!r} is not an integer mask value") from None
        classes = []
        for token in filter(None, (t.strip() for t in rhs.split("+"))):
            if token in ("0", "bg", "background"):
                continue
            if token in class_names:
                classes.append(class_names.index(token))
            elif token.isdigit() and 1 <= int(token) <= len(class_names):
                classes.append(int(token) - 1)
            else:
                raise ValueError(f"levels {spec!r}: {token!r} is not one of the classes {class_names} or 1..{len(class_names)}")
        levels[key] = tuple(sorted(set(classes)))
    if not levels:
        raise ValueError(f"levels {spec!r}: no value given")
    return levels


FUNDUS = ["disc", "cup"]
#: The FedFMS reference code's fundus classes: its optic-disc channel is the rim (disc minus cup).
FUNDUS_RIM = ["rim", "cup"]

#: Named encodings for the common published layouts: name -> (class names, encoding).
PRESETS: dict[str, tuple[list[str], MaskEncoding]] = {
    "palette-disc-cup": (FUNDUS, MaskEncoding("levels", {0: (), 1: (0,), 2: (0, 1)})),
    "grey-disc-cup": (FUNDUS, MaskEncoding("levels", {0: (), 128: (0,), 255: (0, 1)})),
    "rgb-cup0-disc128": (FUNDUS, MaskEncoding("levels", {255: (), 128: (0,), 0: (0, 1)})),
    "palette-rim-cup": (FUNDUS_RIM, MaskEncoding("levels", {0: (), 1: (0,), 2: (1,)})),
    "grey-rim-cup": (FUNDUS_RIM, MaskEncoding("levels", {0: (), 128: (0,), 255: (1,)})),
    "rgb-cup0-rim128": (FUNDUS_RIM, MaskEncoding("levels", {255: (), 128: (0,), 0: (1,)})),
    "threshold": (["foreground"], MaskEncoding("threshold", threshold=127.0)),  # name the class with --classes
    "disc-threshold": (["disc"], MaskEncoding("threshold", threshold=127.0)),
    "inverted-binary": (["foreground"], binary_encoding(0)),
    "binary": (["foreground"], binary_encoding(255)),
    "nonzero": (["foreground"], MaskEncoding("nonzero")),
}
