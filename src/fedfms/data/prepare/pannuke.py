"""PanNuke converter: the published fold arrays -> one client per tissue type (class ``nuclei``).

Layout (as published by the dataset's authors)::

    SRC/Fold 1/images/fold1/images.npy   # (N, 256, 256, 3) RGB, 0-255 (float64 as published)
    SRC/Fold 1/images/fold1/types.npy    # (N,) tissue type of each image, e.g. "Adrenal_gland"
    SRC/Fold 1/masks/fold1/masks.npy     # (N, 256, 256, 6): instance maps of the 5 nucleus
                                         # types (neoplastic ... epithelial), then background
    SRC/Fold 2/...                       # the same for folds 2 and 3

The paper splits PanNuke by tissue type into clients. The mask is the union of the five nucleus
channels. PanNuke gives no patient ids, so each image is its own case. The arrays are read
memory-mapped: a fold is several GB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fedfms.data.manifest import SampleRecord, safe_id
from fedfms.data.prepare.common import OutputSpec, PrepareReport, RawSample, write_samples
from fedfms.data.prepare.intensity import image_to_unit
from fedfms.data.validate import Problems, check_not_empty

CLASS_NAMES = ["nuclei"]
NUCLEUS_CHANNELS = 5


class Fold:
    """One published fold: its three arrays, memory-mapped."""

    def __init__(self, images_file: Path) -> None:
        self.name = images_file.parent.name
        self.images_file = images_file
        self.masks_file = images_file.parents[2] / "masks" / self.name / "masks.npy"
        self.types_file = images_file.parent / "types.npy"

    def load(self, problems: Problems) -> bool:
        """Open the arrays and check that they belong together; problems name the file."""
        for path in (self.masks_file, self.types_file):
            if not path.is_file():
                problems.add(path, f"missing (expected beside {self.images_file})")
        if problems:
            return False
        try:
            self.images = np.load(self.images_file, mmap_mode="r")
            self.masks = np.load(self.masks_file, mmap_mode="r")
            self.types = np.load(self.types_file, allow_pickle=False)
        except (OSError, ValueError) as err:
            problems.add(self.images_file.parent, f"cannot read the fold's arrays: {err}")
            return False
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            problems.add(self.images_file, f"expected (N, H, W, 3) images, found {self.images.shape}")
        if self.masks.shape[:3] != self.images.shape[:3] or self.masks.shape[-1] < NUCLEUS_CHANNELS:
            problems.add(self.masks_file, f"masks {self.masks.shape} do not match images {self.images.shape} "
                                          f"(expected (N, H, W, 6))")
        if self.types.shape != (n,):
            problems.add(self.types_file, f"{self.types.shape[0] if self.types.ndim else 0} tissue types for {n} images")
        return not problems


def find_folds(src: Path, problems: Problems) -> list[Fold]:
    """Every fold under ``src`` (an ``images.npy`` with its masks and types), checked."""
    folds = [Fold(path) for path in sorted(Path(src).rglob("images.npy"))]
    check_not_empty(len(folds), src, problems, "PanNuke folds (images/<fold>/images.npy)")
    return [fold for fold in folds if fold.load(problems)]


def tissue_types(src: Path) -> list[str]:
    """The tissue types present under ``src``, sorted."""
    problems = Problems(source=Path(src))
    folds = find_folds(src, problems)
    problems.raise_if_any()
    return sorted({str(t) for fold in folds for t in fold.types})


def prepare_pannuke(src: Path, out: OutputSpec, tissue: str, limit: int | None = None) -> PrepareReport:
    """Prepare the images of one tissue type (``tissue``, as ``types.npy`` spells it) as the
    client ``out.client``; ``limit``: only the first N images (quick trials, tests)."""
    src = Path(src)
    problems = Problems(source=src)
    folds = find_folds(src, problems)
    problems.raise_if_any()
    units = [(fold, int(i)) for fold in folds for i in np.flatnonzero(fold.types == tissue)]
    if not units:
        found = sorted({str(t) for fold in folds for t in fold.types})
        problems.add(src, f"no image of tissue type {tissue!r}; found: {', '.join(found)}")
    problems.raise_if_any()
    units = units[:limit] if limit else units

    def convert(unit: tuple[Fold, int], problems: Problems, report: PrepareReport) -> Iterator[RawSample]:
        fold, index = unit
        pixels = np.asarray(fold.images[index], dtype=np.float64)
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
            problems.add(fold.images_file, f"image {index}: values outside 0-255 or not finite")
            return
        channels = np.asarray(fold.masks[index, :, :, :NUCLEUS_CHANNELS])
        if not np.isfinite(channels).all() or channels.min() < 0:
            problems.add(fold.masks_file, f"image {index}: nucleus instance ids must be finite and >= 0 "
                                          f"(found {np.nanmin(channels):g}); 0 is background")
            return
        nuclei = channels.max(axis=-1) > 0
        case = f"{safe_id(fold.name)}_{index:05d}"
        record = SampleRecord(id=case, case_id=case, source=f"{fold.images_file.relative_to(src).as_posix()}[{index}]",
                              mask_source=f"{fold.masks_file.relative_to(src).as_posix()}[{index}]")
        yield RawSample(image_to_unit(np.rint(pixels).astype(np.uint8)), nuclei[None], record)

    settings = {"converter": "pannuke", "source": str(src), "tissue": tissue,
                "mask": f"union of the {NUCLEUS_CHANNELS} nucleus-type instance channels", "image_scaling": "uint8 / 255"}
    return write_samples(units, convert, out, CLASS_NAMES, settings, problems, unit="image")
