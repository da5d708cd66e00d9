"""The 3D NIfTI converter on volumes written here with nibabel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from data_helpers import out_spec, save_nifti, volume_pair

from fedfms.data import read_manifest
from fedfms.data.prepare.encodings import MaskEncoding
from fedfms.data.prepare.nifti import NiftiOptions, clip_and_scale, prepare_nifti, preset, slice_channels


def _load(client, sample_id):
    return np.load(client / "images" / f"{sample_id}.npy"), np.load(client / "masks" / f"{sample_id}.npy")


def test_prostate_slices_copies_sizes_and_manifest(tmp_path):
    src = tmp_path / "src"
    for case in ("p01", "p02"):
        volume_pair(src, case, depth=6)
    report = prepare_nifti(src, out_spec(tmp_path, "prostate", 32, 8), preset("prostate"))
    client = tmp_path / "prepared" / "prostate"
    manifest = read_manifest(client)
    assert report.samples == 12 and report.cases == 2 and report.skipped_empty == 0
    assert manifest.class_names == ["prostate"] and (manifest.image_size, manifest.mask_size) == (32, 8)
    record = manifest.samples[3]
    assert (record.case_id, record.slice_index, record.source) == ("p01", 3, "images/p01.nii.gz")
    assert manifest.preprocessing["upper_percentile"] == 99.0 and manifest.preprocessing["channels"] == "copy"
    image, mask = _load(client, record.id)
    assert image.shape == (1, 32, 32) and image.dtype == np.uint8  # grey stored once
    assert mask.shape == (1, 8, 8) and set(np.unique(mask)) == {0, 1}
    first_image, first_mask = _load(client, manifest.samples[0].id)
    assert first_mask.sum() == 0  # slice 0 is empty and kept (keep all)


def test_clip_at_99th_percentile_and_minmax():
    volume = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    scaled = clip_and_scale(volume, 99.0)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert np.isclose(scaled.flat[500], 500 / np.percentile(volume, 99))
    assert (scaled >= 1.0).sum() == 10  # the top 1 % is clipped to 1


def test_fets_label4_neighbours_and_every_kth_empty(tmp_path):
    src = tmp_path / "fets"
    depth = 12
    image = np.random.default_rng(0).uniform(0, 100, (20, 20, depth)).astype(np.float32)
    labels = np.zeros((20, 20, depth), np.int16)
    labels[5:10, 5:10, 9:11] = 4  # enhancing tumour on slices 9, 10
    labels[2:4, 2:4, 0:9] = 2  # oedema elsewhere: background for this target
    labels[12:14, 12:14, 3] = 1
    case = src / "FeTS_001"
    save_nifti(case / "FeTS_001_t1ce.nii.gz", image)
    save_nifti(case / "FeTS_001_seg.nii.gz", labels)
    options = preset("fets", keep_empty_every=5)
    report = prepare_nifti(src, out_spec(tmp_path, "fets", 16, 8), options)
    manifest = read_manifest(tmp_path / "prepared" / "fets")
    kept = [s.slice_index for s in manifest.samples]
    # 10 empty slices (0..8, 11): the 1st and 6th empty ones are kept (0 and 5), plus 9 and 10
    assert kept == [0, 5, 9, 10] and report.skipped_empty == 8
    img, mask = _load(tmp_path / "prepared" / "fets", manifest.samples[2].id)
    assert img.shape == (3, 16, 16) and mask.shape == (1, 8, 8) and mask.sum() > 0
    assert manifest.samples[1].source == "FeTS_001/FeTS_001_t1ce.nii.gz"


def test_fets_reference_preset_makes_the_reference_codes_slices_and_labels(tmp_path):
    """Labels 1 and 4 are the target, the edge slices go, an empty slice stays when its index is a
    multiple of 5 (the reference's FeTS preprocessing)."""
    src = tmp_path / "fets"
    depth = 14
    image = np.random.default_rng(0).uniform(0, 100, (20, 20, depth)).astype(np.float32)
    labels = np.zeros((20, 20, depth), np.int16)
    labels[5:10, 5:10, 8:10] = 4  # enhancing tumour on slices 8, 9
    labels[12:14, 12:14, 3] = 1  # necrotic core on slice 3: foreground for the reference
    labels[12:14, 12:14, 13] = 1  # ... but on the last slice, which the reference drops
    labels[2:4, 2:4, :] = 2  # oedema everywhere: background
    case = src / "FeTS_001"
    save_nifti(case / "FeTS_001_t1ce.nii.gz", image)
    save_nifti(case / "FeTS_001_seg.nii.gz", labels)
    report = prepare_nifti(src, out_spec(tmp_path, "ref", 20, 20), preset("fets-reference"))
    manifest = read_manifest(tmp_path / "prepared" / "ref")
    # slices 1..12; empty: 1, 2, 4, 5, 6, 7, 10, 11, 12 -> 5 and 10 kept (multiples of 5)
    assert [s.slice_index for s in manifest.samples] == [3, 5, 8, 9, 10]
    assert report.skipped_empty == 7 and manifest.class_names == ["tumour_core"]
    _, core = _load(tmp_path / "prepared" / "ref", manifest.samples[0].id)
    assert core[0, 12:14, 12:14].all() and core.sum() == 4  # label 1 is the target
    prepare_nifti(src, out_spec(tmp_path, "paper", 20, 20), preset("fets"))
    paper = read_manifest(tmp_path / "prepared" / "paper")  # the paper's text: label 4, edges kept
    assert [s.slice_index for s in paper.samples] == [0, 5, 8, 9, 12]  # 1st, 6th, 11th empty slice


def test_neighbour_channels_repeat_edges():
    volume = np.arange(4)[:, None, None] * np.ones((4, 2, 2))
    assert slice_channels(volume, 0, "neighbours")[:, 0, 0].tolist() == [0, 0, 1]
    assert slice_channels(volume, 3, "neighbours")[:, 0, 0].tolist() == [2, 3, 3]
    assert slice_channels(volume, 2, "copy").shape == (1, 2, 2)


def test_drop_all_empty_and_multiclass_label_map(tmp_path):
    src = tmp_path / "src"
    image, labels = volume_pair(src, "c1", depth=5, labels_value=2)
    options = NiftiOptions(["organ", "core"], MaskEncoding("levels", {0: (), 2: (0, 1)}), keep_empty_every=0)
    prepare_nifti(src, out_spec(tmp_path), options)
    manifest = read_manifest(tmp_path / "prepared" / "site")
    assert [s.slice_index for s in manifest.samples] == [1, 2, 3]
    _, mask = _load(tmp_path / "prepared" / "site", manifest.samples[0].id)
    assert mask.shape == (2, 8, 8) and (mask[0] == mask[1]).all() and mask.sum() > 0


def test_an_all_background_label_volume_is_reported(tmp_path):
    src = tmp_path / "src"
    volume_pair(src, "c1", depth=4)
    empty_image, empty_labels = volume_pair(src, "c2", depth=4)
    save_nifti(empty_labels, np.zeros((24, 24, 4), np.uint8))
    report = prepare_nifti(src, out_spec(tmp_path), preset("prostate"))
    assert [w for w in report.warnings if "c2" in w and "all background" in w]
    assert not [w for w in report.warnings if "c1" in w]
    assert "warning:" in report.summary()


def test_four_d_singleton_and_nnunet_suffix(tmp_path):
    src = tmp_path / "src"
    image = np.random.default_rng(1).uniform(0, 1, (16, 16, 3, 1)).astype(np.float32)
    labels = np.zeros((16, 16, 3), np.uint8)
    labels[4:8, 4:8, 1] = 1
    save_nifti(src / "imagesTr" / "case_0000.nii.gz", image)
    save_nifti(src / "labelsTr" / "case.nii.gz", labels)
    report = prepare_nifti(src, out_spec(tmp_path), preset("prostate", image_suffix="_0000"))
    assert report.samples == 3 and nib.load(str(src / "imagesTr" / "case_0000.nii.gz")).ndim == 4
