"""``fedfms prepare dicom``: series ordered by position (not by name), SEG / RTSTRUCT / NIfTI
labels, compressed and multi-frame objects, keyed case ids, and DICOM's own failure cases,
each named and with nothing written."""

from __future__ import annotations

import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_helpers import (
    OBLIQUE,
    box_mask,
    box_volume,
    enhanced_mr,
    sorted_by_position,
    write_rtstruct,
    write_seg_label,
    write_series,
)
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from fedfms.data.manifest import read_manifest
from fedfms.data.prepare import OutputSpec
from fedfms.data.prepare.dicom import DicomOptions, prepare_dicom
from fedfms.data.validate import DataValidationError
from fedfms.dicom.identity import keyed_id, load_secret

VOLUME = box_volume()


def _spec(out: Path, client: str = "site") -> OutputSpec:
    return OutputSpec(out, client, image_size=32, mask_size=16, progress=False)


def _masks(client: Path) -> np.ndarray:
    """``(D, 16, 16)`` stored masks of a one-class client, by slice index."""
    manifest = read_manifest(client)
    samples = sorted(manifest.samples, key=lambda s: s.slice_index)
    return np.stack([np.load(client / "masks" / f"{s.id}.npy")[0] for s in samples])


def _images(client: Path) -> np.ndarray:
    manifest = read_manifest(client)
    samples = sorted(manifest.samples, key=lambda s: s.slice_index)
    return np.stack([np.load(client / "images" / f"{s.id}.npy")[0] for s in samples])


def test_series_with_seg_is_ordered_by_position_and_keeps_identity_at_the_site(tmp_path: Path, site_secret: Path) -> None:
    datasets = write_series(tmp_path / "src" / "flat", VOLUME, orientation=OBLIQUE)
    write_seg_label(tmp_path / "src" / "seg" / "x.dcm", sorted_by_position(datasets), box_mask(VOLUME))
    report = prepare_dicom(tmp_path / "src", _spec(tmp_path / "out"), DicomOptions())
    client = tmp_path / "out" / "site"
    manifest = read_manifest(client)
    assert report.samples == 6 and manifest.class_names == ["Prostate"]
    # plane k of the volume (by position, whatever the file names and InstanceNumbers say)
    foreground = _masks(client).sum(axis=(1, 2))
    assert foreground[0] == foreground[-1] == 0 and foreground[1] == foreground[2] < foreground[3] == foreground[4]
    bright = _images(client).mean(axis=(1, 2))
    assert bright[0] < bright[1] and bright[-1] < bright[-2]  # the box is in planes 1..4 only
    secret = load_secret(site_secret)
    assert {s.case_id for s in manifest.samples} == {keyed_id(secret, "PAT-0001")}
    assert site_secret.stat().st_mode & 0o777 == 0o600
    identity = [b"PAT-0001", b"Doe", datasets[0].StudyInstanceUID.encode(), datasets[0].SeriesInstanceUID.encode(),
                datasets[0].SOPInstanceUID.encode()]
    stored = b"".join(p.read_bytes() for p in client.rglob("*") if p.is_file())
    assert not [i for i in identity if i in stored]

    prepare_dicom(tmp_path / "src", _spec(tmp_path / "out", "again"), DicomOptions())
    assert [s.id for s in read_manifest(tmp_path / "out" / "again").samples] == [s.id for s in manifest.samples]
    prepare_dicom(tmp_path / "src", _spec(tmp_path / "out", "other-site"), DicomOptions(secret=tmp_path / "other"))
    assert read_manifest(tmp_path / "out" / "other-site").samples[0].case_id != manifest.samples[0].case_id


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_ct_with_rtstruct_gives_the_seg_masks(syntax: str, tmp_path: Path) -> None:
    """CT (rescale intercept -1024) compressed losslessly, labelled by an RTSTRUCT whose name
    differs from the class: the same samples as the uncompressed CT with a SEG."""
    volume = box_volume(rows=40, cols=44)  # OpenJPEG's default 6 resolutions need 32 px
    plain = write_series(tmp_path / "plain", volume, "CT", patient_id="P2")
    write_seg_label(tmp_path / "plain" / "seg.dcm", sorted_by_position(plain), box_mask(volume), ("prostate",))
    compressed = tmp_path / "compressed"
    compressed.mkdir()
    for ds in plain:
        copy = ds.copy()
        copy.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "pydicom")
        copy.save_as(compressed / str(copy.SOPInstanceUID), enforce_file_format=True)  # no suffix, as PACS exports often are
    write_rtstruct(compressed / "rt.dcm", sorted_by_position(plain), box_mask(volume), "Prostate gland")
    prepare_dicom(tmp_path / "plain", _spec(tmp_path / "out", "seg"), DicomOptions())
    prepare_dicom(compressed, _spec(tmp_path / "out", "rt"),
                  DicomOptions(class_names=["prostate"], label_names={"Prostate gland": "prostate"}))
    np.testing.assert_array_equal(_masks(tmp_path / "out" / "rt"), _masks(tmp_path / "out" / "seg"))
    np.testing.assert_array_equal(_images(tmp_path / "out" / "rt"), _images(tmp_path / "out" / "seg"))
    assert pydicom.dcmread(next(compressed.glob("1.*"))).file_meta.TransferSyntaxUID == syntax


def test_enhanced_multiframe_equals_its_single_frames(tmp_path: Path) -> None:
    single = write_series(tmp_path / "single", VOLUME)
    write_seg_label(tmp_path / "single" / "seg.dcm", sorted_by_position(single), box_mask(VOLUME))
    shuffled = random.Random(1).sample(single, len(single))
    image = enhanced_mr(tmp_path / "multi" / "mr.dcm", shuffled)
    heights = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in image.PerFrameFunctionalGroupsSequence]
    assert heights != sorted(heights)  # frames stored top to bottom, planes counted bottom to top
    frame_order = np.argsort(np.argsort(heights))
    write_seg_label(tmp_path / "multi" / "seg.dcm", [image], box_mask(VOLUME)[frame_order])
    prepare_dicom(tmp_path / "single", _spec(tmp_path / "out", "single"), DicomOptions())
    prepare_dicom(tmp_path / "multi", _spec(tmp_path / "out", "multi"), DicomOptions())
    np.testing.assert_array_equal(_images(tmp_path / "out" / "multi"), _images(tmp_path / "out" / "single"))
    np.testing.assert_array_equal(_masks(tmp_path / "out" / "multi"), _masks(tmp_path / "out" / "single"))


def test_nifti_label_in_the_series_geometry(tmp_path: Path) -> None:
    """A NIfTI label (X = columns, Y = rows, Z = planes; RAS affine of the oblique series) gives
    the SEG's masks; a label in another geometry is refused."""
    spacing, origin = (0.8, 0.7, 2.5), np.array([-10.0, 20.0, 5.0])
    rows, cols = np.asarray(OBLIQUE[0]), np.asarray(OBLIQUE[1])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = rows * spacing[1], cols * spacing[0], np.cross(rows, cols) * spacing[2], origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    datasets = write_series(tmp_path / "src", VOLUME, orientation=OBLIQUE, spacing=spacing, origin=tuple(origin))
    write_seg_label(tmp_path / "seg" / "seg.dcm", sorted_by_position(datasets), box_mask(VOLUME))
    for ds in datasets:
        ds.save_as(tmp_path / "seg" / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    labels = np.transpose(box_mask(VOLUME), (2, 1, 0)).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, ras), str(tmp_path / "label.nii.gz"))
    prepare_dicom(tmp_path / "seg", _spec(tmp_path / "out", "seg"), DicomOptions(class_names=["Prostate"]))
    prepare_dicom(tmp_path / "src", _spec(tmp_path / "out", "nifti"),
                  DicomOptions(class_names=["Prostate"], nifti_label=tmp_path / "label.nii.gz"))
    np.testing.assert_array_equal(_masks(tmp_path / "out" / "nifti"), _masks(tmp_path / "out" / "seg"))

    nib.save(nib.Nifti1Image(labels, np.diag([0.7, 0.8, 2.5, 1.0])), str(tmp_path / "label.nii.gz"))
    message = _problems(tmp_path, DicomOptions(nifti_label=tmp_path / "label.nii.gz"))
    assert f"{tmp_path / 'label.nii.gz'}: geometry mismatch" in message


def _problems(tmp_path: Path, options: DicomOptions | None = None) -> str:
    with pytest.raises(DataValidationError) as caught:
        prepare_dicom(tmp_path / "src", _spec(tmp_path / "out"), options or DicomOptions())
    assert not (tmp_path / "out" / "site").exists()
    return str(caught.value)


def _labelled(tmp_path: Path, **series) -> list[pydicom.Dataset]:
    datasets = write_series(tmp_path / "src", VOLUME, **series)
    write_seg_label(tmp_path / "src" / "seg.dcm", sorted_by_position(datasets), box_mask(VOLUME)[: len(datasets)])
    return datasets


def test_missing_and_duplicate_slices(tmp_path: Path) -> None:
    datasets = write_series(tmp_path / "src", VOLUME, skip=(3,))
    write_seg_label(tmp_path / "src" / "seg.dcm", sorted_by_position(datasets), box_mask(VOLUME)[[0, 1, 2, 4, 5]])
    message = _problems(tmp_path)
    after = sorted_by_position(datasets)
    assert f"{tmp_path}/src/{after[3].SOPInstanceUID}.dcm: gap of 5.000 mm: about 1 slice(s) missing after " \
           f"{tmp_path}/src/{after[2].SOPInstanceUID}.dcm" in message

    copy = after[1].copy()
    copy.SOPInstanceUID = generate_uid()
    copy.save_as(tmp_path / "src" / "dup.dcm", enforce_file_format=True)
    assert f"{tmp_path}/src/dup.dcm: duplicate slice position" in _problems(tmp_path)


def test_mixed_orientation_missing_pixels_and_undecodable_syntax(tmp_path: Path) -> None:
    datasets = _labelled(tmp_path)
    odd = tmp_path / "src" / f"{datasets[2].SOPInstanceUID}.dcm"
    ds = pydicom.dcmread(odd)
    ds.ImageOrientationPatient = list(OBLIQUE[0] + OBLIQUE[1])
    ds.save_as(odd, enforce_file_format=True)
    finer = tmp_path / "src" / f"{datasets[4].SOPInstanceUID}.dcm"
    ds = pydicom.dcmread(finer)
    ds.PixelSpacing = [0.5, 0.5]
    ds.save_as(finer, enforce_file_format=True)
    shifted = tmp_path / "src" / f"{datasets[1].SOPInstanceUID}.dcm"
    ds = pydicom.dcmread(shifted)
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0] + 1.0, *ds.ImagePositionPatient[1:]]  # gantry tilt
    ds.save_as(shifted, enforce_file_format=True)
    message = _problems(tmp_path)
    assert f"{odd}: mixed orientation in series" in message
    assert f"{finer}: mixed pixel spacing or matrix size in series" in message
    assert f"{shifted}: planes not stacked along their normal" in message

    datasets = _labelled(tmp_path / "b")
    target = tmp_path / "b" / "src" / f"{datasets[1].SOPInstanceUID}.dcm"
    ds = pydicom.dcmread(target)
    del ds.PixelData
    ds.save_as(target, enforce_file_format=True)
    target2 = tmp_path / "b" / "src" / f"{datasets[2].SOPInstanceUID}.dcm"
    ds = pydicom.dcmread(target2)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264: video, no image decoder
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(target2, enforce_file_format=True)
    message = _problems(tmp_path / "b")
    assert f"{target}: missing pixel data" in message
    assert f"{target2}: unsupported transfer syntax MPEG-4 AVC/H.264 High Profile / Level 4.1" in message


def test_labels_of_another_series_or_frame_of_reference(tmp_path: Path) -> None:
    datasets = write_series(tmp_path / "src" / "a", VOLUME)
    other = write_series(tmp_path / "elsewhere", VOLUME)
    write_seg_label(tmp_path / "src" / "seg.dcm", sorted_by_position(other), box_mask(VOLUME))
    message = _problems(tmp_path)
    assert f"{tmp_path}/src/seg.dcm: references series {other[0].SeriesInstanceUID}, which is not in" in message

    (tmp_path / "src" / "seg.dcm").unlink()
    moved = [ds.copy() for ds in sorted_by_position(datasets)]
    for ds in moved:
        ds.FrameOfReferenceUID = "1.2.3.4"
    write_seg_label(tmp_path / "src" / "seg.dcm", moved, box_mask(VOLUME))
    assert f"src/seg.dcm: references series {datasets[0].SeriesInstanceUID} in frame of reference 1.2.3.4, not" in _problems(tmp_path)


def test_several_unlabelled_series_say_how_to_choose(tmp_path: Path) -> None:
    a = write_series(tmp_path / "src" / "t2", VOLUME)
    b = write_series(tmp_path / "src" / "adc", VOLUME, study_uid=a[0].StudyInstanceUID)
    message = _problems(tmp_path)
    assert "no SEG or RTSTRUCT references any of the 2 series" in message and "--series UID" in message
    assert a[0].SeriesInstanceUID in message and b[0].SeriesInstanceUID in message
    # a label on one of them chooses it; the other is skipped with a warning
    write_seg_label(tmp_path / "src" / "seg.dcm", sorted_by_position(a), box_mask(VOLUME))
    report = prepare_dicom(tmp_path / "src", _spec(tmp_path / "out"), DicomOptions())
    assert report.samples == 6 and any(b[0].SeriesInstanceUID in w for w in report.warnings)


def test_pydicom_ct_file_is_a_one_plane_series(tmp_path: Path) -> None:
    """pydicom's shipped CT_small.dcm (a real scanner's header, 128 x 128) with a SEG."""
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    (tmp_path / "src").mkdir()
    ct.save_as(tmp_path / "src" / "ct", enforce_file_format=True)
    mask = np.zeros((1, 128, 128), bool)
    mask[0, 40:80, 50:90] = True
    write_seg_label(tmp_path / "src" / "seg", [ct], mask)
    report = prepare_dicom(tmp_path / "src", _spec(tmp_path / "out"), DicomOptions())
    assert report.samples == 1
    assert _masks(tmp_path / "out" / "site")[0, 5:10, 6:11].all() and not _masks(tmp_path / "out" / "site")[0, :4].any()


def test_cli_prepares_and_refuses(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fedfms.cli import app

    datasets = write_series(tmp_path / "src", VOLUME)
    write_seg_label(tmp_path / "src" / "seg.dcm", sorted_by_position(datasets), box_mask(VOLUME), ("Prostate gland",))
    run = ["prepare", "dicom", str(tmp_path / "src"), str(tmp_path / "out"), "--client", "site-a", "--classes", "prostate",
           "--image-size", "32", "--mask-size", "16", "--no-progress"]
    result = CliRunner().invoke(app, run)
    assert result.exit_code == 1 and "no label for class(es) ['prostate']" in result.output
    assert "--label-names" in result.output and not (tmp_path / "out" / "site-a").exists()
    result = CliRunner().invoke(app, [*run, "--label-names", "Prostate gland=prostate"])
    assert result.exit_code == 0, result.output
    assert "site-a: 6 samples from 1 cases" in result.output
