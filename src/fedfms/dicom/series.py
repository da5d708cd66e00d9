"""DICOM image series from a folder of any nesting and file names (a PACS export, a DICOMweb
download), checked and read into a volume.

Every file is parsed by pydicom (pixel data deferred); files that are not DICOM are skipped.
Image objects are grouped by SeriesInstanceUID; single-frame images and enhanced multi-frame
objects (per-frame or shared functional groups) become *planes*, ordered by their
ImagePositionPatient along the slice normal (the cross product of ImageOrientationPatient's
row and column directions), never by file name or InstanceNumber. A series is refused, each
problem as ``file: problem``, for: planes in another frame of reference, mixed orientation,
pixel spacing or matrix size, planes not stacked along their normal (gantry tilt), two planes
at one position, a gap (a missing slice) or irregular spacing, missing pixel data, and a
transfer syntax no installed decoder reads (named, with the package that would read it).

Voxels: stored values through the modality transform (rescale slope/intercept or a modality
LUT, per frame for enhanced objects; highdicom), as float32 ``(D, R, C)``: plane, row, column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedfms.data.validate import Problems, check_unique

if TYPE_CHECKING:
    from pydicom import Dataset

#: Modalities of objects that hold no image planes of a volume.
NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
ORIENTATION_TOLERANCE = 1e-4
POSITION_TOLERANCE_MM = 1e-2
SPACING_TOLERANCE = 0.01  # relative deviation of one step from the series' median step


@dataclass(frozen=True)
class Plane:
    """One image plane: the object's file, its 1-based frame number, its position (LPS, mm)."""

    path: Path
    frame: int
    position: tuple[float, float, float]


@dataclass
class Series:
    """The image objects of one series and their planes (sorted along the normal once checked)."""

    uid: str
    objects: dict[Path, Dataset] = field(default_factory=dict)
    planes: list[Plane] = field(default_factory=list)

    @property
    def first(self) -> Dataset:
        return next(iter(self.objects.values()))

    @property
    def head(self) -> Dataset:
        """The object of the first kept plane (whose geometry every kept plane shares)."""
        return self.objects[self.planes[0].path] if self.planes else self.first

    @property
    def study_uid(self) -> str:
        return str(self.first.get("StudyInstanceUID", ""))

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.first.get("FrameOfReferenceUID", ""))

    @property
    def multi_frame(self) -> bool:
        """One enhanced multi-frame object (rather than single-frame images)."""
        return len(self.objects) == 1 and "PerFrameFunctionalGroupsSequence" in self.first

    def describe(self) -> str:
        ds = self.first
        what = f"{ds.get('Modality', '?')} {str(ds.get('SeriesDescription', '')).strip()!r}"
        return f"{self.uid} ({what}, {len(self.planes)} planes, {next(iter(self.objects)).parent})"

    @property
    def orientation(self) -> np.ndarray:
        """``(2, 3)`` row direction (along a row, columns increasing) and column direction."""
        return np.asarray(_geometry(self.head, 1, "PlaneOrientationSequence", "ImageOrientationPatient"),
                          dtype=float).reshape(2, 3)

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(between rows, between columns) in mm."""
        row, col = _geometry(self.head, 1, "PixelMeasuresSequence", "PixelSpacing")
        return float(row), float(col)

    def affine(self) -> np.ndarray:
        """``(4, 4)`` voxel (column, row, plane) -> patient LPS (mm), DICOM's convention."""
        rows, cols = self.orientation
        dy, dx = self.pixel_spacing
        origin = np.asarray(self.planes[0].position)
        if len(self.planes) > 1:
            step = (np.asarray(self.planes[-1].position) - origin) / (len(self.planes) - 1)
        else:
            thickness = float(_geometry(self.head, 1, "PixelMeasuresSequence", "SliceThickness") or 1.0)
            step = np.cross(rows, cols) * thickness
        affine = np.eye(4)
        affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = rows * dx, cols * dy, step, origin
        return affine

    def nifti_affine(self) -> np.ndarray:
        """:meth:`affine` in NIfTI's RAS convention (x and y negated)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine()


@dataclass
class Scan:
    """What a folder holds: image series by UID, label objects (SEG, RTSTRUCT), skipped files."""

    series: dict[str, Series] = field(default_factory=dict)
    labels: dict[Path, Dataset] = field(default_factory=dict)
    not_dicom: list[Path] = field(default_factory=list)


def _geometry(ds: Dataset, frame: int, group: str, keyword: str) -> object:
    """An attribute of frame ``frame`` (1-based): in the frame's functional group, the shared
    one, or (single-frame objects) the dataset itself; ``None`` if absent."""
    for where in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(where)
        if items:
            item = items[frame - 1] if where.startswith("PerFrame") else items[0]
            if group in item and keyword in item[group][0]:
                return item[group][0].get(keyword)
    return ds.get(keyword)


def _files(src: Path) -> Iterator[Path]:
    if src.is_file():
        yield src
        return
    yield from sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))


def scan_folder(src: Path, problems: Problems) -> Scan:
    """Parse every file under ``src`` (or the file ``src``); group images by series."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    scan = Scan()
    uids = []
    for path in _files(src):
        try:
            ds = dcmread(path, defer_size="4 KB")
        except InvalidDicomError:
            scan.not_dicom.append(path)
            continue
        except Exception as err:  # noqa: BLE001 - a truncated header raises various errors
            problems.add(path, f"unreadable DICOM file ({type(err).__name__}: {err})")
            continue
        if "SOPInstanceUID" in ds:
            uids.append((str(ds.SOPInstanceUID), str(path)))
        modality = str(ds.get("Modality", ""))
        if modality in ("SEG", "RTSTRUCT"):
            scan.labels[path] = ds
        elif modality not in NON_IMAGE_MODALITIES and "Rows" in ds and "SeriesInstanceUID" in ds:
            scan.series.setdefault(str(ds.SeriesInstanceUID), Series(str(ds.SeriesInstanceUID))).objects[path] = ds
    check_unique(uids, problems, "SOPInstanceUID (the same image twice)")
    return scan


def check_decodable(path: Path, ds: Dataset, problems: Problems) -> bool:
    """Pixel data present and its transfer syntax readable by an installed decoder."""
    from pydicom.pixels import get_decoder

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        problems.add(path, "missing pixel data")
        return False
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed:
        return True
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        problems.add(path, f"unsupported transfer syntax {syntax.name} ({syntax}): no decoder in pydicom or its plugins; "
                           "have the PACS send it uncompressed or losslessly compressed (JPEG 2000, JPEG-LS, RLE)")
        return False
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies)
        problems.add(path, f"transfer syntax {syntax.name} ({syntax}) needs a decoder package: {needs}")
        return False
    return True


def collect_planes(series: Series, problems: Problems) -> None:
    """Planes of every object; a plane whose orientation, spacing or matrix differs from the
    series' most common one, or an object in another frame of reference, is a problem."""
    from collections import Counter

    first_path = next(iter(series.objects))
    found = []  # (plane, (orientation, spacing, matrix)) with values rounded for comparison
    for path, ds in series.objects.items():
        if str(ds.get("FrameOfReferenceUID", "")) != series.frame_of_reference_uid:
            problems.add(path, f"frame of reference {ds.get('FrameOfReferenceUID')} differs from "
                               f"{series.frame_of_reference_uid} of {first_path} in the same series")
            continue
        if not check_decodable(path, ds, problems):
            continue
        for frame in range(1, int(ds.get("NumberOfFrames", 1) or 1) + 1):
            position = _geometry(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
            orientation = _geometry(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _geometry(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
            if position is None or orientation is None or spacing is None:
                problems.add(path, f"frame {frame}: no ImagePositionPatient, ImageOrientationPatient or PixelSpacing; "
                                   "not a plane of a volume (a localizer or secondary capture?)")
                break
            geometry = (tuple(np.round(np.asarray(orientation, float) / ORIENTATION_TOLERANCE).astype(int)),
                        tuple(np.round(np.asarray(spacing, float), 4)), (int(ds.Rows), int(ds.Columns)))
            found.append((Plane(path, frame, tuple(float(v) for v in position)), geometry))
    if not found:
        return
    common = Counter(g for _, g in found).most_common(1)[0][0]
    for plane, (orientation, spacing, matrix) in found:
        if orientation != common[0]:
            problems.add(plane.path, f"mixed orientation in series {series.uid}: "
                                     f"{list(np.multiply(orientation, ORIENTATION_TOLERANCE))} vs the other planes' "
                                     f"{list(np.multiply(common[0], ORIENTATION_TOLERANCE))}")
        elif (spacing, matrix) != common[1:]:
            problems.add(plane.path, f"mixed pixel spacing or matrix size in series {series.uid}: {list(spacing)} mm, "
                                     f"{matrix} vs the other planes' {list(common[1])} mm, {common[2]}")
        else:
            series.planes.append(plane)


def _where(plane: Plane, multi_frame: bool) -> str:
    return f"{plane.path} frame {plane.frame}" if multi_frame else str(plane.path)


def sort_planes(series: Series, problems: Problems) -> None:
    """Order the planes along the slice normal; record duplicates, tilted stacks, gaps and
    irregular spacing."""
    if not series.planes:
        return
    rows, cols = series.orientation
    normal = np.cross(rows, cols)
    positions = np.array([p.position for p in series.planes])
    order = np.argsort(positions @ normal, kind="stable")
    series.planes = [series.planes[i] for i in order]
    positions = positions[order]
    distances = positions @ normal
    steps = np.diff(distances)
    named = [_where(p, series.multi_frame) for p in series.planes]
    for k in np.flatnonzero(steps < POSITION_TOLERANCE_MM):
        problems.add(named[k + 1], f"duplicate slice position {distances[k]:.3f} mm along the normal (also {named[k]})")
    offsets = positions - positions[0] - np.outer(distances - distances[0], normal)
    for k in np.flatnonzero(np.linalg.norm(offsets, axis=1) > POSITION_TOLERANCE_MM):
        problems.add(named[k], "planes not stacked along their normal (gantry tilt or a shifted slice); "
                               "resample the series to an orthogonal grid first")
        break
    if len(steps) and (steps >= POSITION_TOLERANCE_MM).all():
        median = float(np.median(steps))
        for k in np.flatnonzero(np.abs(steps - median) > SPACING_TOLERANCE * median):
            what = (f"gap of {steps[k]:.3f} mm: about {round(steps[k] / median) - 1} slice(s) missing"
                    if steps[k] > 1.5 * median else f"irregular slice spacing {steps[k]:.3f} mm")
            problems.add(named[k + 1], f"{what} after {named[k]} (series spacing {median:.3f} mm)")


def check_series(series: Series, problems: Problems) -> None:
    """Collect, check and sort the planes of ``series`` (problems recorded)."""
    collect_planes(series, problems)
    sort_planes(series, problems)


def read_volume(series: Series, problems: Problems) -> np.ndarray | None:
    """The checked series' voxels ``(D, R, C)`` float32 after the modality transform (``None``
    with the failing file recorded if a decoder fails)."""
    import highdicom as hd

    images: dict[Path, hd.Image] = {}
    planes = []
    for plane in series.planes:
        try:
            if plane.path not in images:
                images[plane.path] = hd.Image.from_dataset(series.objects[plane.path], copy=False)
            planes.append(images[plane.path].get_frame(plane.frame, dtype=np.float32))
        except Exception as err:  # noqa: BLE001 - decoders raise many kinds for corrupt data
            problems.add(plane.path, f"pixel data cannot be decoded ({type(err).__name__}: {err})")
            return None
    volume = np.stack(planes)
    if volume.ndim != 3:
        problems.add(series.planes[0].path, f"not a grey image: planes of shape {volume.shape[1:]}")
        return None
    return volume
