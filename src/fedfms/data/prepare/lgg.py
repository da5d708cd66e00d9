"""LGG brain MRI (Buda et al. 2019, TCGA lower-grade glioma) in its published layout, one
client per hospital::

    SITE/CASE/CASE_N.tif         # one axial slice, 256x256 RGB: pre-contrast, FLAIR, post-contrast
    SITE/CASE/CASE_N_mask.tif    # its FLAIR abnormality mask, 0 or 255

Read by the generic 2D converter (:mod:`fedfms.data.prepare.images`) in its side-by-side
layout: a case is a patient folder, its slices in numeric order; a mask value other than 0 and
255, an unpaired slice or mask and a mask of another shape than its slice are problems naming
the file.
"""

from __future__ import annotations

from pathlib import Path

from fedfms.data.prepare.common import OutputSpec, PrepareReport
from fedfms.data.prepare.encodings import binary_encoding
from fedfms.data.prepare.images import ImageOptions, prepare_images

CLASS_NAMES = ["abnormality"]
MASK_SUFFIX = "_mask"
#: Slices lying directly in the source folder (one patient's folder given as the source): the
#: case id is the stem without its slice number.
CASE_REGEX = r"^(.+)_\d+$"


def lgg_options(limit: int | None = None, skip_unpaired: bool = False) -> ImageOptions:
    """The published layout: side-by-side ``_mask`` TIFFs, binary 0/255, case = patient folder."""
    return ImageOptions(CLASS_NAMES, binary_encoding(255), layout="side-by-side", case_regex=CASE_REGEX,
                        mask_suffix=MASK_SUFFIX, skip_unpaired=skip_unpaired, limit=limit)


def site_folders(root: Path) -> list[Path]:
    """Hospital folders under a root of the data set (folders whose sub-folders hold mask
    files); empty when ``root`` is itself a hospital's folder."""
    def holds_masks(folder: Path) -> bool:
        return any(f.is_file() and f.stem.endswith(MASK_SUFFIX) for f in folder.iterdir())

    def is_site(folder: Path) -> bool:
        return any(case.is_dir() and holds_masks(case) for case in folder.iterdir())

    if is_site(root):
        return []
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and is_site(p))


def prepare_lgg(src: Path, out: OutputSpec, limit: int | None = None, skip_unpaired: bool = False) -> PrepareReport:
    """Prepare one hospital's folder (patients' folders of slices) as one client."""
    return prepare_images(src, out, lgg_options(limit, skip_unpaired), converter="lgg")
