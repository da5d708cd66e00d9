"""DICOM converter: a folder of DICOM files as a PACS exports it (any nesting, any file names)
-> 2D slices of each labelled series, with :mod:`fedfms.dicom.series`'s checks.

Labels: a DICOM SEG or RTSTRUCT in the folder that references a series is paired with it
(:mod:`fedfms.dicom.labels`: segments / ROIs to classes by name, ``label_names`` renames);
or, for a folder of one series (or one chosen with ``series``), a NIfTI label volume
(``nifti_label``) in the series' geometry (X = columns, Y = rows, Z = planes along the normal,
the affine the series gives), decoded by ``label_map`` as ``prepare nifti`` does. Series that
no label references are skipped with a warning; a folder with no labelled series at all, a
series with two label objects, or a label whose series is not in the folder is an error.

Intensity and slicing are ``prepare nifti``'s (:func:`~fedfms.data.prepare.nifti.kept_slices`):
per series, the modality-transformed voxels (CT in HU) clipped at ``upper_percentile`` and
min-max scaled; slices along the normal; channels ``copy`` or ``neighbours``; empty slices by
``keep_empty_every``.

Patient identity stays at the site (:mod:`fedfms.dicom.identity`): case id = keyed hash of
PatientID, sample ids = case id + keyed hash of study and series + slice index; the manifest
records neither names, ids, UIDs nor source paths (a PACS export's folder names often are the
patient's name).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from fedfms.data.manifest import SampleRecord, safe_id
from fedfms.data.prepare.common import OutputSpec, PrepareReport, RawSample, write_samples
from fedfms.data.prepare.encodings import MaskEncoding, label_map_encoding
from fedfms.data.prepare.intensity import clip_and_scale
from fedfms.data.prepare.nifti import Channels, kept_slices
from fedfms.data.validate import Problems, check_not_empty, check_same_affine, check_same_shape
from fedfms.dicom.identity import keyed_id, load_secret
from fedfms.dicom.labels import ClassNames, label_names, read_label, referenced
from fedfms.dicom.series import Scan, Series, check_series, read_volume, scan_folder


@dataclass(frozen=True)
class DicomOptions:
    """Classes and label pairing, series choice, intensity and slicing rules of a DICOM source."""

    class_names: list[str] | None = None  # None: the labels of the first label object, in its order
    label_names: dict[str, str] = field(default_factory=dict)
    series: tuple[str, ...] = ()
    nifti_label: Path | None = None
    label_map: MaskEncoding | None = None
    channels: Channels = "copy"
    keep_empty_every: int = 1
    empty_rule: Literal["count", "index"] = "count"
    drop_edge_slices: bool = False
    upper_percentile: float = 99.0
    secret: Path | None = None
    limit: int | None = None


@dataclass(frozen=True)
class LabelledSeries:
    series: Series
    label: Path  # a SEG / RTSTRUCT in the scan, or the NIfTI label volume


def _choose(scan: Scan, options: DicomOptions, src: Path, problems: Problems) -> list[Series]:
    unknown = [uid for uid in options.series if uid not in scan.series]
    for uid in unknown:
        problems.add(src, f"--series {uid}: no image series with this UID (found: {', '.join(scan.series) or 'none'})")
    return [s for uid, s in scan.series.items() if not options.series or uid in options.series]


def pair_labels(scan: Scan, options: DicomOptions, src: Path, problems: Problems, report: PrepareReport) -> list[LabelledSeries]:
    """Structure checks: series choice, label pairing, empty client."""
    chosen = _choose(scan, options, src, problems)
    if options.nifti_label is not None:
        if len(chosen) != 1:
            listing = "; ".join(s.describe() for s in chosen)
            problems.add(src, f"--nifti-label needs exactly one series, found {len(chosen)} ({listing}); choose one with --series UID")
            return []
        return [LabelledSeries(chosen[0], options.nifti_label)]
    by_series: dict[str, list[Path]] = {}
    for path, ds in scan.labels.items():
        uid = referenced(ds)[0]
        if uid not in scan.series:
            problems.add(path, f"references series {uid or '(none)'}, which is not in {src}")
        by_series.setdefault(uid, []).append(path)
    pairs, unlabelled = [], []
    for series in chosen:
        labels = by_series.get(series.uid, [])
        if len(labels) > 1:
            problems.add(labels[1], f"series {series.uid} has {len(labels)} label objects ({', '.join(map(str, labels))}); "
                                    "keep one in the folder")
        elif labels:
            pairs.append(LabelledSeries(series, labels[0]))
        else:
            unlabelled.append(series)
    if pairs and unlabelled:
        report.warnings.append(f"skipped {len(unlabelled)} series without a SEG or RTSTRUCT: "
                               + "; ".join(s.describe() for s in unlabelled))
    elif unlabelled:
        listing = "; ".join(s.describe() for s in unlabelled)
        problems.add(src, f"no SEG or RTSTRUCT references any of the {len(unlabelled)} series ({listing}); "
                          "add the labels, or give --nifti-label with --series UID")
    pairs = pairs[: options.limit] if options.limit else pairs
    check_not_empty(len(pairs), src, problems, "labelled DICOM series")
    return pairs


def _nifti_masks(unit: LabelledSeries, classes: list[str], label_map: MaskEncoding, problems: Problems) -> np.ndarray | None:
    """``(C, D, R, C')`` class masks from a NIfTI label volume in the series' geometry."""
    import nibabel as nib

    path, series = unit.label, unit.series
    try:
        img = nib.load(str(path))
        labels = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - any reader error is a bad file to report
        problems.add(path, f"unreadable NIfTI label ({type(err).__name__}: {err})")
        return None
    expected = (int(series.first.Columns), int(series.first.Rows), len(series.planes))
    if not check_same_shape(expected, labels.shape[:3], series.describe(), path, problems):
        return None
    if not check_same_affine(series.nifti_affine(), img.affine, series.describe(), path, problems):
        return None
    return label_map.decode(np.transpose(labels.reshape(expected), (2, 1, 0)), len(classes), path, problems)


def prepare_dicom(src: Path, out: OutputSpec, options: DicomOptions) -> PrepareReport:
    """Prepare a folder of DICOM files as one client (see the module docstring)."""
    src = Path(src)
    problems = Problems(source=src)
    report = PrepareReport(out.out_root / out.client)
    scan = scan_folder(src, problems)
    if scan.not_dicom:
        report.warnings.append(f"skipped {len(scan.not_dicom)} file(s) that are not DICOM Part 10 files, e.g. {scan.not_dicom[0]}")
    units = pair_labels(scan, options, src, problems, report)
    for unit in units:
        check_series(unit.series, problems)
    problems.raise_if_any()
    first_label = scan.labels.get(units[0].label) if units else None
    class_names = options.class_names or (
        list(label_names(first_label).values()) if first_label is not None else ["foreground"])
    label_map = options.label_map or label_map_encoding(len(class_names))
    classes = ClassNames(class_names, options.label_names)
    secret = load_secret(options.secret)

    def convert(unit: LabelledSeries, problems: Problems, report: PrepareReport) -> Iterator[RawSample]:
        series = unit.series
        volume = read_volume(series, problems)
        if unit.label in scan.labels:
            mask = read_label(unit.label, scan.labels[unit.label], series, classes, problems, report.warnings)
        else:
            mask = _nifti_masks(unit, class_names, label_map, problems)
        if volume is None or mask is None:
            return
        patient = str(series.first.get("PatientID", ""))
        case = keyed_id(secret, patient)
        key = keyed_id(secret, patient, series.study_uid, series.uid)[:8]
        if not mask.any():
            report.warnings.append(f"{unit.label}: no voxel of any class {class_names} (all background) in case {case}")

        def record_of(k: int) -> SampleRecord:
            return SampleRecord(id=safe_id(f"{case}_{key}_z{k:04d}"), case_id=case, source=f"dicom:{key}",
                                mask_source=f"dicom:{key}:label", slice_index=k)

        yield from kept_slices(clip_and_scale(volume, options.upper_percentile), mask, options, report, record_of)

    settings = {
        "converter": "dicom", "source": "DICOM folder (path not recorded: it may name the patient)",
        "labels": "nifti" if options.nifti_label else "SEG/RTSTRUCT by name", "label_names": dict(options.label_names),
        "intensity": f"per series after the modality transform: clip at percentile {options.upper_percentile}, min-max to [0, 1]",
        "upper_percentile": options.upper_percentile, "channels": options.channels,
        "keep_empty_every": options.keep_empty_every, "empty_rule": options.empty_rule,
        "drop_edge_slices": options.drop_edge_slices, "slice_axis": "normal (ImageOrientationPatient)",
        "case_id": "HMAC-SHA256(site secret, PatientID)",
    }
    return write_samples(units, convert, out, class_names, settings, problems, report)
