"""The converters on the real multi-source sets in ../shared/data (a few files each, for speed)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from data_helpers import out_spec

from fedfms.data import DataValidationError, read_manifest
from fedfms.data.prepare import MASK_PRESETS, ImageOptions, binary_encoding, prepare_images, prepare_monuseg

ORGANS = ("breast", "kidney", "liver", "prostate")
PROSTATE_SITES = ("BIDMC", "BMC", "HK", "RUNMC", "UCL")


def copy_case(src, dst, masks: int):
    """One MoNuSeg case with only its first ``masks`` nucleus PNGs."""
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    for path in (src / "images").iterdir():
        shutil.copy(path, dst / "images")
    for path in sorted((src / "masks").iterdir())[:masks]:
        shutil.copy(path, dst / "masks")


@pytest.mark.parametrize("organ", ORGANS)
def test_monuseg_organ_as_client(shared_data, tmp_path, organ):
    case = sorted((shared_data / "nuclei-monuseg" / organ).iterdir())[0]
    copy_case(case, tmp_path / organ / case.name, masks=40)
    report = prepare_monuseg(tmp_path / organ, out_spec(tmp_path, organ, 64, 32))
    manifest = read_manifest(tmp_path / "prepared" / organ)
    assert manifest.class_names == ["nuclei"] and manifest.samples[0].case_id == case.name
    assert 0.001 < report.foreground_fraction[0] < 0.2  # 40 nuclei of ~300-1800 in a 1000x1000 tile


def test_monuseg_full_case_union_and_tiles(shared_data, tmp_path):
    organ = shared_data / "nuclei-monuseg" / "prostate"
    report = prepare_monuseg(organ, out_spec(tmp_path, "prostate", 64, 64), tile=256, limit=1)
    manifest = read_manifest(tmp_path / "prepared" / "prostate")
    assert report.samples == 16 and len(manifest.case_ids) == 1  # 1000 px -> 4 x 4 tiles of 256, one case
    assert 0.05 < np.mean(report.foreground_fraction) < 0.5  # union of all nuclei: plausible H&E density


def test_drishti_palette(shared_data, tmp_path):
    report = prepare_images(shared_data / "fundus/Drishti-GS", out_spec(tmp_path, "drishti", 64, 64),
                            ImageOptions(*MASK_PRESETS["palette-disc-cup"], limit=3))
    disc, cup = report.foreground_fraction
    assert report.samples == 3 and disc > cup > 0.01  # crops around the disc: large disc, cup inside


def test_drishti_rim_preset_is_the_disc_minus_the_cup(shared_data, tmp_path):
    """The reference code's optic-disc channel: the rim. Same files, disc = rim + cup pixel for pixel."""
    options = {name: ImageOptions(*MASK_PRESETS[name], limit=3) for name in ("palette-disc-cup", "palette-rim-cup")}
    for name, option in options.items():
        prepare_images(shared_data / "fundus/Drishti-GS", out_spec(tmp_path, name, 64, 64), option)
    disc = np.stack([np.load(p) for p in sorted((tmp_path / "prepared/palette-disc-cup/masks").glob("*.npy"))])
    rim = np.stack([np.load(p) for p in sorted((tmp_path / "prepared/palette-rim-cup/masks").glob("*.npy"))])
    assert read_manifest(tmp_path / "prepared/palette-rim-cup").class_names == ["rim", "cup"]
    assert np.array_equal(rim[:, 1], disc[:, 1])  # the same cup
    assert np.array_equal(rim[:, 0], disc[:, 0] & (1 - disc[:, 1]))  # rim = disc without the cup
    assert rim[:, 0].sum() > 0 and not (rim[:, 0] & rim[:, 1]).any()


def test_drions_grey_jpeg_disc_only(shared_data, tmp_path):
    report = prepare_images(shared_data / "fundus/DRIONS-DB", out_spec(tmp_path, "drions", 64, 64),
                            ImageOptions(*MASK_PRESETS["disc-threshold"], limit=3))
    assert read_manifest(tmp_path / "prepared/drions").class_names == ["disc"]
    assert 0.005 < report.foreground_fraction[0] < 0.1


@pytest.mark.parametrize("domain", ["Domain1", "Domain2", "Domain3", "Domain4"])
def test_four_domain_rgb_levels(shared_data, tmp_path, domain):
    report = prepare_images(shared_data / "fundus/four-domain-samples" / domain, out_spec(tmp_path, domain, 64, 64),
                            ImageOptions(*MASK_PRESETS["rgb-cup0-disc128"]))
    disc, cup = report.foreground_fraction
    assert report.samples == 2 and report.cases == 2 and disc > cup > 0


@pytest.mark.parametrize("site", PROSTATE_SITES)
def test_prostate_inverted_masks(shared_data, tmp_path, site):
    report = prepare_images(shared_data / "prostate-slices" / site, out_spec(tmp_path, site, 64, 64),
                            ImageOptions(["prostate"], binary_encoding(0), case_regex=r"^(\d+)_"))
    assert report.samples == 2 and 0 < report.foreground_fraction[0] < 0.05  # ~1 %, not the 99 % background


def test_prostate_i2cvb_unpaired_reported(shared_data, tmp_path):
    src = shared_data / "prostate-slices" / "I2CVB"
    options = ImageOptions(["prostate"], binary_encoding(0))
    with pytest.raises(DataValidationError) as err:
        prepare_images(src, out_spec(tmp_path, "I2CVB"), options)
    message = str(err.value)
    assert "train/image/00_01.png: image has no mask" in message and "train/mask/00_00.png: mask has no image" in message
    assert not (tmp_path / "prepared" / "I2CVB").exists()
    with pytest.warns(UserWarning, match="00_01.png"):
        report = prepare_images(src, out_spec(tmp_path, "I2CVB"), ImageOptions(["prostate"], binary_encoding(0), skip_unpaired=True))
    assert report.samples == 1 and "train/mask/00_00.png" in report.warnings[0]
