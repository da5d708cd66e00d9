"""The LGG brain MRI set in its published layout (patient folders, each slice's ``_mask`` TIFF
beside it): the real files of ../shared/data/brain-lgg, and small broken copies of them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile
from data_helpers import out_spec
from typer.testing import CliRunner

from fedfms.data import DataValidationError, read_manifest
from fedfms.data.cli import prepare_app
from fedfms.data.prepare import prepare_lgg


def slice_number(sample_id: str) -> int:
    return int(sample_id.rsplit("_", 1)[1])


def test_a_real_hospital_becomes_one_client_of_patients(shared_data, tmp_path):
    site = shared_data / "brain-lgg" / "DU"
    report = prepare_lgg(site, out_spec(tmp_path, "DU", 32, 32))
    manifest = read_manifest(tmp_path / "prepared" / "DU")
    patients = sorted(p.name for p in site.iterdir() if p.is_dir())
    slices = sorted(site.rglob("*_mask.tif"))
    assert report.samples == len(slices) and manifest.case_ids == patients  # cases = patients, every slice kept
    for patient in patients:  # slices in numeric order within each patient (1, 5, 9, 13, ... not 1, 13, 5)
        numbers = [slice_number(s.id) for s in manifest.samples if s.case_id == patient]
        assert numbers == sorted(numbers) and len(numbers) > 1
    masks = np.stack([np.load(tmp_path / "prepared/DU/masks" / f"{s.id}.npy") for s in manifest.samples])
    expected = np.mean([(tifffile.imread(m)[::8, ::8] > 0).mean() > 0 for m in slices])
    assert np.mean(masks.reshape(len(masks), -1).any(axis=1)) == pytest.approx(expected, abs=0.05)


def slice_number_of_path(path) -> int:
    return slice_number(path.stem)


def copy_patient(shared_data, dst, site="HT", slices=4):
    """The first ``slices`` slices (and masks) of one real patient of ``site``."""
    patient = sorted((shared_data / "brain-lgg" / site).iterdir())[0]
    (dst / patient.name).mkdir(parents=True)
    images = sorted((p for p in patient.iterdir() if not p.stem.endswith("_mask")), key=slice_number_of_path)[:slices]
    for image in images:
        shutil.copy(image, dst / patient.name)
        shutil.copy(image.with_name(f"{image.stem}_mask.tif"), dst / patient.name)
    return dst / patient.name


def problem_lines(src, tmp_path) -> list[str]:
    with pytest.raises(DataValidationError) as err:
        prepare_lgg(src, out_spec(tmp_path, "HT"))
    assert not (tmp_path / "prepared" / "HT").exists()
    return str(err.value).splitlines()


def assert_named(lines: list[str], expected: list[tuple[str, str]]) -> None:
    for name, problem in expected:
        assert any(name in line and problem in line for line in lines), (name, lines)


def test_broken_copies_are_listed_file_by_file_and_nothing_is_written(shared_data, tmp_path):
    """Structure first (pairing, as every converter), then every slice's content."""
    patient = copy_patient(shared_data, tmp_path / "HT")
    images = sorted((p for p in patient.iterdir() if not p.stem.endswith("_mask")), key=slice_number_of_path)
    lone_image, bad_values, bad_shape, _ = images
    lone_image.with_name(f"{lone_image.stem}_mask.tif").unlink()
    lone_mask = patient / f"{patient.name}_999_mask.tif"
    tifffile.imwrite(lone_mask, np.zeros((256, 256), np.uint8))
    tifffile.imwrite(bad_values.with_name(f"{bad_values.stem}_mask.tif"), np.full((256, 256), 128, np.uint8))
    tifffile.imwrite(bad_shape.with_name(f"{bad_shape.stem}_mask.tif"), np.zeros((128, 128), np.uint8))
    assert_named(problem_lines(tmp_path / "HT", tmp_path),
                 [(lone_image.name, "image has no mask"), (lone_mask.name, "mask has no image")])
    lone_image.unlink()
    lone_mask.unlink()
    assert_named(problem_lines(tmp_path / "HT", tmp_path),
                 [(f"{bad_values.stem}_mask.tif", "label values 128"), (f"{bad_shape.stem}_mask.tif", "shape mismatch")])


def test_a_root_of_hospitals_gives_one_client_each_and_is_never_merged(shared_data, tmp_path):
    for site in ("DU", "FG"):
        copy_patient(shared_data, tmp_path / "lgg" / site, site, slices=2)
    args = [str(tmp_path / "lgg"), str(tmp_path / "out"), "--image-size", "32", "--mask-size", "32", "--no-progress"]
    result = CliRunner().invoke(prepare_app, ["lgg", *args])
    assert result.exit_code == 0, result.output
    assert [read_manifest(tmp_path / "out" / s).samples.__len__() for s in ("DU", "FG")] == [2, 2]
    result = CliRunner().invoke(prepare_app, ["images", "--layout", "side-by-side", "--mask-suffix", "_mask",
                                              "--client", "all", *args])
    assert result.exit_code == 1 and "case folders of 2 sources (DU, FG)" in result.output
    assert not (tmp_path / "out" / "all").exists()


def test_one_broken_hospital_leaves_no_other_hospital_written(shared_data, tmp_path):
    copy_patient(shared_data, tmp_path / "lgg" / "DU", "DU", slices=2)
    broken = copy_patient(shared_data, tmp_path / "lgg" / "FG", "FG", slices=2)
    lone_mask = next(broken.glob("*_mask.tif"))
    lone_mask.unlink()  # FG (prepared after DU) has an image without its mask
    args = [str(tmp_path / "lgg"), str(tmp_path / "out"), "--image-size", "32", "--mask-size", "32", "--no-progress"]
    result = CliRunner().invoke(prepare_app, ["lgg", *args])
    assert result.exit_code == 1 and "nothing written" in result.output and "image has no mask" in result.output
    assert not any((tmp_path / "out").glob("*/manifest.json")), "DU was written though FG failed"
    lone_mask.with_name(lone_mask.name.replace("_mask", "")).unlink()  # fixed: the same command runs again
    assert CliRunner().invoke(prepare_app, ["lgg", *args]).exit_code == 0
