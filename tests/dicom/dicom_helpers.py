"""DICOM series for the tests, written with pydicom from small volumes: MR or CT, any
orientation, compressed or not, single-frame files with shuffled UID-like names or one enhanced
multi-frame object; and a bright-box volume that a stand-in model segments exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from torch import nn

AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
#: rows and columns rotated 30 degrees about x and 20 about z: an oblique MR stack
_A, _B = np.deg2rad(20), np.deg2rad(30)
OBLIQUE = (
    (float(np.cos(_A)), float(np.sin(_A)), 0.0),
    (float(-np.sin(_A) * np.cos(_B)), float(np.cos(_A) * np.cos(_B)), float(np.sin(_B))),
)


def tiny_checkpoint(folder: Path, class_names: tuple[str, ...]) -> Path:
    """A tiny MSA SAM (32 px input, one class per name) saved as a fedfms checkpoint folder."""
    from fedfms.config import ModelConfig
    from fedfms.models import build_model, save_checkpoint

    cfg = ModelConfig(backbone="tiny", mode="msa", image_size=32, num_classes=len(class_names))
    torch.manual_seed(0)
    save_checkpoint(folder, build_model(cfg), cfg, {"class_names": ",".join(class_names)})
    return folder


def box_volume(depth: int = 6, rows: int = 20, cols: int = 24) -> np.ndarray:
    """``(D, R, C)`` int16: background ramp up to 300 with a bright (1000) box in planes
    1..D-2 and a second one in planes D-3 and D-2 only, so that a reversed order shows."""
    volume = np.tile(np.linspace(0, 300, cols, dtype=np.float32), (depth, rows, 1))
    volume[1:-1, 5:15, 6:18] = 1000
    volume[-3:-1, 15:19, 18:22] = 1000
    return volume.astype(np.int16)


def write_series(
    folder: Path,
    volume: np.ndarray,
    modality: str = "MR",
    orientation: tuple[tuple[float, ...], tuple[float, ...]] = AXIAL,
    spacing: tuple[float, float, float] = (0.8, 0.7, 2.5),
    origin: tuple[float, float, float] = (-10.0, 20.0, 5.0),
    patient_id: str = "PAT-0001",
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    skip: tuple[int, ...] = (),
) -> list[Dataset]:
    """Write ``volume (D, R, C)`` as one single-frame file per plane under ``folder``, named by
    its SOPInstanceUID (so never in slice order); plane ``k`` sits at ``origin + k * spacing[2]``
    along the normal. CT stores HU + 1024 with intercept -1024. Planes in ``skip`` are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = np.asarray(orientation[0]), np.asarray(orientation[1])
    normal = np.cross(rows, cols)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), frame_of_reference_uid or generate_uid()
    datasets = []
    for k, plane in enumerate(volume):
        if k in skip:
            continue
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, "Doe^Jane", "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "1", "A1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 3, len(volume) - k  # reversed: never trusted
        ds.SeriesDescription, ds.Manufacturer = f"{modality} test", "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [round(v, 6) for v in (*rows, *cols)]
        ds.ImagePositionPatient = [round(float(v), 6) for v in np.asarray(origin) + k * spacing[2] * normal]
        ds.PixelSpacing, ds.SliceThickness = [spacing[0], spacing[1]], spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if modality == "CT":
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
            plane = plane + 1024
        if modality == "MR":
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
            ds.EchoTime, ds.RepetitionTime, ds.MagneticFieldStrength = 90, 3000, 3
        ds.PixelData = plane.astype(np.int16).tobytes()
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


class BrightIsForeground(nn.Module):
    """A stand-in model: class-0 logits = the image's first channel above 0.5, at 1/4 size."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, 1, S/4, S/4)
        return (F.avg_pool2d(images[:, :1], 4) - 0.5) * 50


def sorted_by_position(datasets: list[Dataset]) -> list[Dataset]:
    """Planes along the normal, as a viewer (and the test's expectations) order them."""
    normal = np.cross(*np.asarray(datasets[0].ImageOrientationPatient, float).reshape(2, 3))
    return sorted(datasets, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, float), normal)))


def box_mask(volume: np.ndarray) -> np.ndarray:
    """The bright box of :func:`box_volume`, ``(D, R, C)`` bool."""
    return volume >= 1000


def write_seg_label(path: Path, datasets: list[Dataset], mask: np.ndarray, labels: tuple[str, ...] = ("Prostate",)) -> Dataset:
    """A binary DICOM SEG (highdicom) of ``mask (D, R, C)`` on the planes ``datasets`` (sorted),
    one segment per label (all the same mask)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n + 1, segment_label=label, segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Organ, algorithm_type="MANUAL",
        )
        for n, label in enumerate(labels)
    ]
    pixels = np.repeat(mask[..., None], len(labels), axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def write_rtstruct(path: Path, datasets: list[Dataset], mask: np.ndarray, name: str = "PROSTATE") -> Dataset:
    """An RTSTRUCT with one ROI: per plane, the outline of each rectangle of ``mask`` through the
    centres of its border pixels (patient coordinates), as a planning system draws it."""
    from pydicom.sequence import Sequence
    from scipy import ndimage

    first = datasets[0]
    rows, cols = np.asarray(first.ImageOrientationPatient, float).reshape(2, 3)
    dy, dx = (float(v) for v in first.PixelSpacing)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.Modality, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "RTSTRUCT", first.PatientID, first.StudyInstanceUID, generate_uid()
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    study = Dataset()
    study.ReferencedSOPInstanceUID, study.RTReferencedSeriesSequence = first.StudyInstanceUID, Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = first.FrameOfReferenceUID, Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber, roi.ROIName, roi.ReferencedFrameOfReferenceUID = 7, name, first.FrameOfReferenceUID
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    for plane, ds_plane in zip(mask, datasets, strict=True):
        for box in ndimage.find_objects(ndimage.label(plane)[0]):
            r0, r1, c0, c1 = box[0].start, box[0].stop - 1, box[1].start, box[1].stop - 1
            origin = np.asarray(ds_plane.ImagePositionPatient, float)
            points = [origin + j * dy * cols + i * dx * rows for j, i in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))]
            contour = Dataset()
            contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", 4
            contour.ContourData = [round(float(v), 4) for p in points for v in p]
            contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber, roi_contour.ContourSequence = 7, Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def enhanced_mr(path: Path, datasets: list[Dataset]) -> Dataset:
    """The single-frame MR ``datasets`` as one enhanced multi-frame object (highdicom's legacy
    conversion), frames in the given order."""
    import highdicom as hd

    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        legacy_datasets=datasets, series_instance_uid=hd.UID(), series_number=4, sop_instance_uid=hd.UID(), instance_number=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(path)
    return image
