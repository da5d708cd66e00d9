"""Every integrity check refuses bad data with a message naming the file, and writes nothing."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from data_helpers import out_spec, save_nifti, save_png, volume_pair

from fedfms.data import DataValidationError, read_manifest
from fedfms.data.prepare import ImageOptions, MaskEncoding, binary_encoding, prepare_images, prepare_nifti
from fedfms.data.prepare.nifti import preset

GREY = np.full((16, 16), 100, np.uint8)
BINARY = np.zeros((16, 16), np.uint8)
BINARY[4:8, 4:8] = 255
OPTIONS = ImageOptions(["organ"], binary_encoding(255))


def refuse_nifti(tmp_path, src, *expected, **overrides):
    with pytest.raises(DataValidationError) as err:
        prepare_nifti(src, out_spec(tmp_path), preset("prostate", **overrides))
    assert_refused(tmp_path, err, *expected)


def refuse_images(tmp_path, src, *expected, options=OPTIONS):
    with pytest.raises(DataValidationError) as err:
        prepare_images(src, out_spec(tmp_path), options)
    assert_refused(tmp_path, err, *expected)


def assert_refused(tmp_path, err, *expected):
    message = str(err.value)
    for text in expected:
        assert text in message, message
    prepared = tmp_path / "prepared"
    assert not prepared.exists() or list(prepared.iterdir()) == [], "a failed preparation left files"


def test_shape_mismatch_2d(tmp_path):
    save_png(tmp_path / "src/images/a.png", GREY)
    bad = save_png(tmp_path / "src/masks/a.png", np.zeros((16, 12), np.uint8))
    refuse_images(tmp_path, tmp_path / "src", str(bad), "shape mismatch")


def test_shape_mismatch_volume(tmp_path):
    volume_pair(tmp_path / "src", "c1")
    bad = save_nifti(tmp_path / "src/labels/c1.nii.gz", np.zeros((24, 24, 5), np.uint8))
    refuse_nifti(tmp_path, tmp_path / "src", str(bad), "shape mismatch")


def test_affine_mismatch(tmp_path):
    image, _ = volume_pair(tmp_path / "src", "c1")
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    bad = save_nifti(tmp_path / "src/labels/c1.nii.gz", np.zeros((24, 24, 6), np.uint8), shifted)
    refuse_nifti(tmp_path, tmp_path / "src", str(bad), "geometry mismatch", str(image))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_and_inf(tmp_path, value):
    image, _ = volume_pair(tmp_path / "src", "c1")
    data = np.ones((24, 24, 6), np.float32)
    data[3, 3, 3] = value
    bad = save_nifti(image, data)
    refuse_nifti(tmp_path, tmp_path / "src", str(bad), "NaN" if np.isnan(value) else "1 Inf")


def test_label_outside_classes(tmp_path):
    _, labels = volume_pair(tmp_path / "src", "c1", labels_value=3)
    refuse_nifti(tmp_path, tmp_path / "src", str(labels), "label values 3 outside the declared labels [0, 1]")


def test_label_outside_levels_2d(tmp_path):
    save_png(tmp_path / "src/images/a.png", GREY)
    bad = save_png(tmp_path / "src/masks/a.png", np.where(BINARY > 0, 7, 0).astype(np.uint8))
    refuse_images(tmp_path, tmp_path / "src", str(bad), "label values 7")


def test_unreadable_file(tmp_path):
    save_png(tmp_path / "src/images/a.png", GREY)
    bad = tmp_path / "src/masks/a.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an image at all")
    refuse_images(tmp_path, tmp_path / "src", str(bad), "unreadable or truncated")


def test_truncated_png(tmp_path):
    save_png(tmp_path / "src/masks/a.png", BINARY)
    good = save_png(tmp_path / "src/images/a.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    save_png(tmp_path / "src/masks/a.png", np.zeros((64, 64), np.uint8))
    good.write_bytes(good.read_bytes()[:300])
    refuse_images(tmp_path, tmp_path / "src", str(good), "unreadable or truncated")


def test_truncated_nifti(tmp_path):
    image, _ = volume_pair(tmp_path / "src", "c1")
    raw = gzip.decompress(image.read_bytes())
    image.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # header intact, voxels cut
    refuse_nifti(tmp_path, tmp_path / "src", str(image), "unreadable or truncated")


def test_empty_client(tmp_path):
    (tmp_path / "src/images").mkdir(parents=True)
    (tmp_path / "src/masks").mkdir()
    refuse_images(tmp_path, tmp_path / "src", str(tmp_path / "src"), "empty client")
    refuse_nifti(tmp_path, tmp_path / "src", "empty client")


def test_empty_after_dropping_empty_slices(tmp_path):
    save_nifti(tmp_path / "src/images/c1.nii.gz", np.ones((8, 8, 3), np.float32))
    save_nifti(tmp_path / "src/labels/c1.nii.gz", np.zeros((8, 8, 3), np.uint8))
    refuse_nifti(tmp_path, tmp_path / "src", "every sample was skipped", keep_empty_every=0)


def test_duplicate_case_ids(tmp_path):
    first, _ = volume_pair(tmp_path / "src", "c1")
    second = save_nifti(tmp_path / "src/images/c1.nii", np.ones((24, 24, 6), np.float32))
    refuse_nifti(tmp_path, tmp_path / "src", "duplicate case id 'c1'", str(first), str(second))


def test_duplicate_sample_ids_2d(tmp_path):
    save_png(tmp_path / "src/images/a.png", GREY)
    save_png(tmp_path / "src/images/a.jpg", GREY)
    save_png(tmp_path / "src/masks/a.png", BINARY)
    refuse_images(tmp_path, tmp_path / "src", "duplicate sample id 'a'", "a.jpg")


def test_wrong_dimensionality(tmp_path):
    bad = save_nifti(tmp_path / "src/images/c1.nii.gz", np.ones((8, 8), np.float32))
    save_nifti(tmp_path / "src/labels/c1.nii.gz", np.zeros((8, 8), np.uint8))
    refuse_nifti(tmp_path, tmp_path / "src", str(bad), "wrong dimensionality", "expected 3D")
    save_png(tmp_path / "two/images/a.png", GREY)
    save_nifti(tmp_path / "two/masks/a.nii.gz", np.zeros((16, 16, 4), np.uint8))
    refuse_images(tmp_path, tmp_path / "two", str(tmp_path / "two/masks/a.nii.gz"), "wrong dimensionality")


def test_colour_coded_mask_refused(tmp_path):
    save_png(tmp_path / "src/images/a.png", GREY)
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[2:4, 2:4, 0] = 255
    bad = save_png(tmp_path / "src/masks/a.png", colour)
    refuse_images(tmp_path, tmp_path / "src", str(bad), "colour-coded")


def test_unpaired_reported_or_skipped(tmp_path):
    save_png(tmp_path / "src/images/a.png", GREY)
    save_png(tmp_path / "src/masks/a.png", BINARY)
    lone_image = save_png(tmp_path / "src/images/b.png", GREY)
    lone_mask = save_png(tmp_path / "src/masks/c.png", BINARY)
    refuse_images(tmp_path, tmp_path / "src", f"{lone_image}: image has no mask", f"{lone_mask}: mask has no image")
    options = ImageOptions(["organ"], binary_encoding(255), skip_unpaired=True)
    with pytest.warns(UserWarning, match="b.png"):
        report = prepare_images(tmp_path / "src", out_spec(tmp_path), options)
    assert report.samples == 1 and str(lone_mask) in report.warnings[0]


def test_all_problems_listed_at_once(tmp_path):
    for stem in ("a", "b"):
        save_png(tmp_path / f"src/images/{stem}.png", GREY)
        save_png(tmp_path / f"src/masks/{stem}.png", np.full((16, 16), 9, np.uint8))
    with pytest.raises(DataValidationError) as err:
        prepare_images(tmp_path / "src", out_spec(tmp_path), OPTIONS)
    assert len(err.value.problems) == 2 and "2 problem(s)" in str(err.value)


def test_failure_keeps_existing_client_intact(tmp_path):
    save_png(tmp_path / "src/images/a.png", GREY)
    save_png(tmp_path / "src/masks/a.png", BINARY)
    prepare_images(tmp_path / "src", out_spec(tmp_path), OPTIONS)
    before = read_manifest(tmp_path / "prepared/site")
    save_png(tmp_path / "src/masks/a.png", np.full((16, 16), 9, np.uint8))
    with pytest.raises(DataValidationError):
        prepare_images(tmp_path / "src", out_spec(tmp_path, mode="overwrite"), OPTIONS)
    assert read_manifest(tmp_path / "prepared/site") == before
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == ["site"]  # no temporary left


def test_non_integer_labels(tmp_path):
    image, _ = volume_pair(tmp_path / "src", "c1")
    labels = np.zeros((24, 24, 6), np.float32)
    labels[1, 1, 1] = 0.5
    bad = save_nifti(tmp_path / "src/labels/c1.nii.gz", labels)
    refuse_nifti(tmp_path, tmp_path / "src", str(bad), "non-integer")


def test_one_class_encoding_for_two_classes_is_a_usage_error(tmp_path):
    save_png(tmp_path / "src/images/a.png", GREY)
    save_png(tmp_path / "src/masks/a.png", BINARY)
    with pytest.raises(ValueError, match="one class"):
        prepare_images(tmp_path / "src", out_spec(tmp_path), ImageOptions(["a", "b"], MaskEncoding("threshold")))
    assert not (tmp_path / "prepared/site").exists()
