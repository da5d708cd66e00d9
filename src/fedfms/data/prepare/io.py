"""Reading 2D images and masks (PNG, JPEG, TIFF, BMP, 2D NIfTI) into numpy, with clear errors.

Readers never raise for bad files: they record a problem (unreadable, truncated, wrong
dimensionality) and return ``None``, so that a converter can report every bad file at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedfms.data.validate import Problems, check_finite, check_ndim

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *NIFTI_SUFFIXES)
logger = logging.getLogger("fedfms")


def split_suffix(path: Path) -> tuple[str, str]:
    """``a.nii.gz`` -> (``a``, ``.nii.gz``); ``b.PNG`` -> (``b``, ``.png``)."""
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")], ".nii.gz"
    return path.stem, path.suffix.lower()


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and split_suffix(path)[1] in IMAGE_SUFFIXES


def warn_broken_links(folder: Path) -> None:
    """Name, in the log, every symbolic link in ``folder`` whose target is missing or loops:
    the listing skips it (it is no file), which should not go unsaid."""
    for path in sorted(folder.iterdir()):
        if path.is_symlink() and not path.exists():
            logger.warning("%s: broken symbolic link (its target is missing or loops); skipped", path)


def _read_raw(path: Path, as_mask: bool) -> np.ndarray:
    suffix = split_suffix(path)[1]
    if suffix in NIFTI_SUFFIXES:
        import nibabel as nib

        data = np.asanyarray(nib.load(str(path)).dataobj)
        while data.ndim > 2 and data.shape[-1] == 1:
            data = data[..., 0]
        return data
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(str(path))
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode == "1" or im.mode == "LA":
            im = im.convert("L")
        elif im.mode == "P" and not as_mask:
            im = im.convert("RGB")
        elif im.mode in ("RGBA", "CMYK", "YCbCr"):
            im = im.convert("RGB")
        return np.asarray(im)


def _read(path: Path, problems: Problems, as_mask: bool) -> np.ndarray | None:
    try:
        array = _read_raw(path, as_mask)
    except Exception as err:  # noqa: BLE001 - every decoder error is a bad file to report
        problems.add(path, f"unreadable or truncated file ({type(err).__name__}: {err})")
        return None
    if split_suffix(path)[1] in NIFTI_SUFFIXES and not check_ndim(
        array.shape, (2,), path, problems, "NIfTI image in a 2D source (use `prepare nifti` for volumes)"
    ):
        return None
    if not check_finite(array, path, problems):
        return None
    return array


def read_image(path: Path, problems: Problems) -> np.ndarray | None:
    """Image as (H, W) grey or (H, W, 3) RGB (alpha dropped, palette expanded)."""
    array = _read(path, problems, as_mask=False)
    if array is None:
        return None
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    ok = check_ndim(array.shape, (2,), path, problems, "grey image") if array.ndim != 3 else (
        array.shape[-1] == 3 or check_ndim(array.shape, (2,), path, problems, "image (3 channels expected)")
    )
    return array if ok else None


def read_mask(path: Path, problems: Problems) -> np.ndarray | None:
    """Mask as (H, W) integer values: palette indices are kept, grey RGB is reduced to one channel.

    An RGB mask whose channels differ (a colour-coded mask) is refused.
    """
    array = _read(path, problems, as_mask=True)
    if array is None:
        return None
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        rgb = array[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            problems.add(path, "colour-coded RGB mask (channels differ); give grey levels or one mask per class")
            return None
        array = rgb[..., 0]
    if not check_ndim(array.shape, (2,), path, problems, "mask"):
        return None
    return array
