"""``fedfms predict`` on DICOM: the DICOM SEG read back with highdicom equals the NIfTI mask
of the same prediction voxel for voxel, in the source's geometry (axial CT, oblique MR,
enhanced multi-frame MR), and references the source as a PACS expects."""

from __future__ import annotations

import hashlib
import random
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_helpers import (
    OBLIQUE,
    BrightIsForeground,
    box_mask,
    box_volume,
    enhanced_mr,
    sorted_by_position,
    tiny_checkpoint,
    write_series,
)
from PIL import Image
from typer.testing import CliRunner

import fedfms
from fedfms.cli import app, main
from fedfms.dicom.predict import choose_series, predict_series
from fedfms.predict import Predictor

VOLUME = box_volume(depth=7, rows=32, cols=36)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-class MSA SAM (32 px input) saved as a fedfms checkpoint folder."""
    return tiny_checkpoint(tmp_path_factory.mktemp("run") / "best_model", ("prostate", "lesion"))


def _source(kind: str, folder: Path) -> list[pydicom.Dataset]:
    """The source series; planes (or frames) as stored, in position order for the test."""
    if kind == "ct-axial":
        return sorted_by_position(write_series(folder, VOLUME, "CT"))
    datasets = write_series(folder / "single", VOLUME, orientation=OBLIQUE)
    if kind == "mr-oblique":
        return sorted_by_position(datasets)
    image = enhanced_mr(folder / "mr.dcm", random.Random(0).sample(datasets, len(datasets)))
    for path in (folder / "single").iterdir():
        path.unlink()
    return [image]


@pytest.mark.parametrize("kind", ["ct-axial", "mr-oblique", "mr-multiframe"])
def test_seg_equals_the_nifti_mask_in_the_source_geometry(kind: str, tmp_path: Path) -> None:
    sources = _source(kind, tmp_path / "in")
    series = choose_series(tmp_path / "in" / "mr.dcm" if kind == "mr-multiframe" else tmp_path / "in", None)
    predictor = Predictor(BrightIsForeground(), 32, 1, torch.device("cpu"), torch.float32, progress=False)
    nifti_path, seg_path = predict_series(predictor, series, tmp_path / "out", ["prostate"], "ab" * 32)

    nifti = nib.load(str(nifti_path))
    mask = np.transpose(np.asanyarray(nifti.dataobj), (2, 1, 0))  # (planes, rows, columns)
    assert (mask.astype(bool) == box_mask(VOLUME)).mean() > 0.97 and mask[3, 10, 12] == 1  # the box, found
    seg = hd.seg.segread(seg_path)
    if kind == "mr-multiframe":
        (image,) = sources
        frames = image.PerFrameFunctionalGroupsSequence
        positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in frames]
        normal = np.cross(*np.asarray(OBLIQUE))
        order = np.argsort([p @ normal for p in positions])  # plane k = frame order[k] + 1
        read = seg.get_pixels_by_source_frame(image.SOPInstanceUID, source_frame_numbers=[int(i) + 1 for i in order],
                                              combine_segments=True)
        plane_positions = [positions[i] for i in order]
    else:
        read = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources], combine_segments=True)
        plane_positions = [np.asarray(ds.ImagePositionPatient, float) for ds in sources]
    np.testing.assert_array_equal(read, mask)
    for k, position in enumerate(plane_positions):  # voxel (0, 0, k) of the NIfTI is the plane's first pixel
        np.testing.assert_allclose((nifti.affine @ [0, 0, k, 1])[:3], (LPS_TO_RAS[:3, :3] @ position), atol=1e-3)
    seg_positions = {tuple(np.round(f.PlanePositionSequence[0].ImagePositionPatient, 3)) for f in seg.PerFrameFunctionalGroupsSequence}
    assert seg_positions == {tuple(np.round(p, 3)) for p in plane_positions}


def test_cli_writes_a_seg_that_references_the_series(checkpoint: Path, tmp_path: Path) -> None:
    sources = sorted_by_position(write_series(tmp_path / "in", VOLUME, orientation=OBLIQUE))
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(checkpoint), "-i", str(tmp_path / "in"),
                                      "-o", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    uid = sources[0].SeriesInstanceUID
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{uid}.nii.gz", f"{uid}.seg.dcm"]
    seg = hd.seg.segread(tmp_path / "out" / f"{uid}.seg.dcm")
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.SeriesInstanceUID != uid
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID and seg.PatientID == "PAT-0001"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in sources}
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["prostate", "lesion"]
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    digest = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert algorithm.AlgorithmName == "fedfms" and algorithm.AlgorithmVersion == fedfms.__version__
    assert algorithm.AlgorithmParameters == f"checkpoint_sha256={digest}"
    nifti = nib.load(str(tmp_path / "out" / f"{uid}.nii.gz"))
    read = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in sources])  # (D, R, C, 2)
    labels = np.transpose(np.asanyarray(nifti.dataobj), (2, 1, 0))
    np.testing.assert_array_equal(read[..., 1], labels == 2)  # the later class is drawn on top in the NIfTI
    np.testing.assert_array_equal(read[..., 0] & ~read[..., 1], labels == 1)


def _fedfms(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """The command line as a user runs it (its one-line error handler included): (exit status, stderr)."""
    monkeypatch.setattr(sys, "argv", ["fedfms", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_several_series_and_a_broken_one_are_one_line_errors(checkpoint: Path, tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    a = write_series(tmp_path / "in" / "a", VOLUME)
    b_uid = write_series(tmp_path / "in" / "b", VOLUME, skip=(2,))[0].SeriesInstanceUID
    run = ["predict", "--checkpoint", str(checkpoint), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress"]
    code, err = _fedfms(run, capsys, monkeypatch)
    assert code == 1 and "2 image series" in err and "choose one with --series UID" in err, err
    code, err = _fedfms([*run, "--series", a[0].SeriesInstanceUID], capsys, monkeypatch)
    assert code == 0, err
    code, err = _fedfms([*run, "--series", b_uid], capsys, monkeypatch)
    assert code == 1 and "slice(s) missing" in err and not list((tmp_path / "out").glob(f"{b_uid}*"))


def test_cli_overlay_of_a_dicom_series_shows_its_slice_with_the_most_foreground(checkpoint: Path, tmp_path: Path) -> None:
    sources = sorted_by_position(write_series(tmp_path / "in", VOLUME, orientation=OBLIQUE))
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(checkpoint), "-i", str(tmp_path / "in"),
                                      "-o", str(tmp_path / "out"), "--no-progress", "--overlay",
                                      "--threshold", "0.01", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    uid = sources[0].SeriesInstanceUID
    (overlay,) = (tmp_path / "out" / "overlays").iterdir()
    labels = np.transpose(np.asanyarray(nib.load(str(tmp_path / "out" / f"{uid}.nii.gz")).dataobj), (2, 1, 0))
    busiest = int((labels > 0).reshape(len(labels), -1).sum(axis=1).argmax())
    assert overlay.name == f"{uid}_slice{busiest}.png"
    with Image.open(overlay) as picture:
        assert picture.mode == "RGB" and picture.size == (sources[0].Columns, sources[0].Rows)
