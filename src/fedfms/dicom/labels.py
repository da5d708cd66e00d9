"""Labels stored in the PACS beside a series: DICOM SEG (read by highdicom) and RTSTRUCT
(parsed by pydicom), turned into class masks on the series' planes.

A label object belongs to the series it references (SEG: ReferencedSeriesSequence; RTSTRUCT:
RTReferencedSeriesSequence) and must share its frame of reference. Segments / ROIs are matched
to classes by name, case-insensitively, after an optional renaming (``names``: label name ->
class, e.g. ``{"Prostate (whole gland)": "prostate"}``); several may fall into one class (their
union). A class that no segment matches is an error naming the segments found; segments of no
class (a body outline, a couch) are skipped with a warning.

RTSTRUCT contours (CLOSED_PLANAR, patient mm) are mapped into the series' voxel grid and filled
(scikit-image's ``polygon2mask``, pixel centres at integer coordinates); contours on one plane
combine by even-odd rule, so an inner contour is a hole. A contour that lies between planes is
an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedfms.data.validate import Problems
from fedfms.dicom.series import Series

if TYPE_CHECKING:
    from pydicom import Dataset

PLANE_TOLERANCE = 0.1  # of the slice spacing: how far off a plane an RTSTRUCT contour may lie


@dataclass(frozen=True)
class ClassNames:
    """Classes to produce and how label names map to them (keys case-insensitive)."""

    class_names: list[str]
    names: dict[str, str] = field(default_factory=dict)

    def class_of(self, label: str) -> int | None:
        renamed = {k.casefold(): v for k, v in self.names.items()}.get(label.casefold(), label)
        folded = [c.casefold() for c in self.class_names]
        return folded.index(renamed.casefold()) if renamed.casefold() in folded else None


def referenced(ds: Dataset) -> tuple[str, str]:
    """(series UID, frame of reference UID) a SEG or RTSTRUCT refers to (empty if absent)."""
    if ds.Modality == "SEG":
        series = ds.get("ReferencedSeriesSequence") or [{}]
        return str(series[0].get("SeriesInstanceUID", "")), str(ds.get("FrameOfReferenceUID", ""))
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                return str(series.SeriesInstanceUID), str(frame.get("FrameOfReferenceUID", ""))
    return "", ""


def label_names(ds: Dataset) -> dict[int, str]:
    """Segment number / ROI number -> its label."""
    if ds.Modality == "SEG":
        return {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    return {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}


def _seg_masks(path: Path, ds: Dataset, series: Series, numbers: list[int], problems: Problems) -> np.ndarray | None:
    """``(D, R, C, len(numbers))`` bool from a SEG, on the series' sorted planes."""
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        if series.multi_frame:
            source = series.first
            pixels = seg.get_pixels_by_source_frame(
                str(source.SOPInstanceUID), source_frame_numbers=[p.frame for p in series.planes],
                segment_numbers=numbers, assert_missing_frames_are_empty=True)
        else:
            uids = [str(series.objects[p.path].SOPInstanceUID) for p in series.planes]
            pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, assert_missing_frames_are_empty=True)
    except Exception as err:  # noqa: BLE001 - highdicom raises ValueError/KeyError/AttributeError for bad SEGs
        problems.add(path, f"DICOM SEG cannot be mapped onto its series {series.uid} ({type(err).__name__}: {err})")
        return None
    return pixels > 0


def _rtstruct_masks(path: Path, ds: Dataset, series: Series, numbers: list[int], problems: Problems) -> np.ndarray | None:
    """``(D, R, C, len(numbers))`` bool from an RTSTRUCT's closed planar contours."""
    from skimage.draw import polygon2mask

    shape = (len(series.planes), int(series.first.Rows), int(series.first.Columns))
    masks = np.zeros((*shape, len(numbers)), dtype=bool)
    to_voxel = np.linalg.inv(series.affine())
    contours = {int(c.ReferencedROINumber): c.get("ContourSequence", []) for c in ds.get("ROIContourSequence", [])}
    for channel, number in enumerate(numbers):
        for contour in contours.get(number, []):
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            voxels = (to_voxel @ np.c_[points, np.ones(len(points))].T).T[:, :3]  # (n, 3): column, row, plane
            plane = float(np.round(voxels[:, 2].mean()))
            if str(contour.get("ContourGeometricType", "CLOSED_PLANAR")) == "POINT":
                continue
            if np.abs(voxels[:, 2] - plane).max() > PLANE_TOLERANCE or not 0 <= plane < shape[0]:
                problems.add(path, f"ROI {number}: a contour lies off the planes of series {series.uid} "
                                   f"(plane index {voxels[:, 2].mean():.2f})")
                return None
            masks[int(plane), :, :, channel] ^= polygon2mask(shape[1:], voxels[:, [1, 0]])
    return masks


def read_label(path: Path, ds: Dataset, series: Series, classes: ClassNames, problems: Problems,
               warnings: list[str]) -> np.ndarray | None:
    """``(C, D, R, C')`` bool class masks of a SEG or RTSTRUCT on the series' sorted planes."""
    series_uid, frame_uid = referenced(ds)
    if series_uid != series.uid or frame_uid != series.frame_of_reference_uid:
        problems.add(path, f"references series {series_uid or '(none)'} in frame of reference {frame_uid or '(none)'}, "
                           f"not series {series.uid} in {series.frame_of_reference_uid}")
        return None
    names = label_names(ds)
    by_class: dict[int, list[int]] = {}
    for number, name in names.items():
        index = classes.class_of(name)
        if index is None:
            warnings.append(f"{path}: label {name!r} is none of the classes {classes.class_names}; skipped")
        else:
            by_class.setdefault(index, []).append(number)
    missing = [c for i, c in enumerate(classes.class_names) if i not in by_class]
    if missing:
        problems.add(path, f"no label for class(es) {missing} (labels: {sorted(names.values())}); "
                           "name the classes with --classes or map label names with --label-names 'NAME=CLASS'")
        return None
    numbers = [n for i in range(len(classes.class_names)) for n in by_class[i]]
    read = _seg_masks if ds.Modality == "SEG" else _rtstruct_masks
    pixels = read(path, ds, series, numbers, problems)
    if pixels is None:
        return None
    masks = np.zeros((len(classes.class_names), *pixels.shape[:3]), dtype=bool)
    for channel, number in enumerate(numbers):
        index = next(i for i, ns in by_class.items() if number in ns)
        masks[index] |= pixels[..., channel]
    return masks
