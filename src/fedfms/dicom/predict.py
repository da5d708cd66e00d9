"""``fedfms predict`` on DICOM: a series (a folder of its files, in any layout) or one
multi-frame object -> beside each other in the output folder, named by the SeriesInstanceUID:

* ``<SeriesInstanceUID>.nii.gz``: the label volume (uint8, class ``c`` is ``c + 1``) with X =
  columns, Y = rows, Z = planes along the slice normal and the series' affine in NIfTI's RAS;
* ``<SeriesInstanceUID>.seg.dcm``: the same masks as a binary DICOM SEG (:mod:`fedfms.dicom.seg`),
  one segment per class, in the source's study and frame of reference.

Preprocessing is ``prepare dicom``'s: modality-transformed voxels clipped at the percentile and
min-max scaled per series, slices along the normal.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fedfms.data.prepare.intensity import clip_and_scale
from fedfms.data.prepare.io import is_image_file
from fedfms.data.validate import Problems
from fedfms.dicom.seg import write_seg
from fedfms.dicom.series import Series, check_series, read_volume, scan_folder
from fedfms.errors import FedfmsError
from fedfms.io import output_folder


class DicomInputError(FedfmsError, ValueError):
    """A DICOM input that cannot be predicted; names the file or series and what is wrong."""


def is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file (``DICM`` after the 128-byte preamble), or a folder holding one at
    any depth and no NIfTI or 2D image directly inside."""
    path = Path(path)
    if path.is_file():
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    if path.is_dir() and not any(is_image_file(p) for p in path.iterdir()):
        return any(is_dicom(p) for p in path.rglob("*") if p.is_file())
    return False


def choose_series(src: Path, series_uid: str | None) -> Series:
    """The one image series under ``src`` (or ``series_uid`` of several), checked and sorted."""
    problems = Problems(source=src)
    scan = scan_folder(src, problems)
    if problems:
        raise DicomInputError("; ".join(map(str, problems.items)))
    if series_uid is not None:
        if series_uid not in scan.series:
            raise DicomInputError(f"{src}: no series {series_uid} (found: {', '.join(scan.series) or 'none'})")
        series = scan.series[series_uid]
    elif len(scan.series) == 1:
        (series,) = scan.series.values()
    else:
        found = "; ".join(s.describe() for s in scan.series.values()) or "no image series"
        raise DicomInputError(f"{src}: {len(scan.series)} image series ({found}); choose one with --series UID")
    check_series(series, problems)
    if problems:
        raise DicomInputError("; ".join(map(str, problems.items)))
    return series


def checkpoint_digest(checkpoint: Path) -> str:
    """SHA-256 of the checkpoint's weights file (hex), the model's identity in the SEG."""
    from fedfms.models.checkpoint import STATE_FILE

    digest = hashlib.sha256()
    with (Path(checkpoint) / STATE_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def predict_series(predictor, series: Series, out_dir: Path, class_names: list[str], digest: str) -> list[Path]:
    """Segment a checked series; write its NIfTI label volume and its DICOM SEG into ``out_dir``
    (and, if the predictor has ``overlay``, ``overlays/<SeriesInstanceUID>_slice<k>.png``)."""
    import nibabel as nib

    from fedfms import __version__
    from fedfms.predict import labels_from_masks, save_nifti

    output_folder(out_dir)
    problems = Problems()
    volume = read_volume(series, problems)
    if volume is None:
        raise DicomInputError("; ".join(map(str, problems.items)))
    scaled = clip_and_scale(volume, predictor.upper_percentile)  # (D, R, C)
    per_slice = predictor.segment_volume(scaled, series.uid)  # (D, classes, R, C)
    if predictor.overlay:
        predictor.overlay_volume(series.uid, scaled, per_slice, out_dir)
    masks = np.moveaxis(per_slice, 1, 0)
    labels = np.transpose(labels_from_masks(masks), (2, 1, 0))  # (D, R, C) -> (X = columns, Y = rows, Z = planes)
    image = nib.Nifti1Image(labels, series.nifti_affine())
    image.set_qform(series.nifti_affine(), code=1)  # scanner coordinates
    image.set_sform(series.nifti_affine(), code=1)
    nifti = out_dir / f"{series.uid}.nii.gz"
    save_nifti(image, nifti)
    seg = write_seg(out_dir / f"{series.uid}.seg.dcm", series, masks, class_names, __version__, digest)
    return [nifti, seg]
