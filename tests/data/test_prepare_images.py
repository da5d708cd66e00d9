"""The generic 2D converter and its mask encodings, on PNG/JPEG/TIFF/NIfTI files written here."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from data_helpers import out_spec, save_nifti, save_png

from fedfms.data import read_manifest
from fedfms.data.prepare import MASK_PRESETS, ImageOptions, MaskEncoding, binary_encoding, parse_levels, prepare_images
from fedfms.data.prepare.common import tile_boxes
from fedfms.data.validate import DataValidationError

SIZE = 40


def disc_cup_levels(values=(0, 128, 255)) -> np.ndarray:
    """(SIZE, SIZE) mask: background, disc ring (rows 10..29), cup core (rows 15..24)."""
    mask = np.full((SIZE, SIZE), values[0], np.uint8)
    mask[10:30, 10:30] = values[1]
    mask[15:25, 15:25] = values[2]
    return mask


def rgb(seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def prepared(tmp_path, client="site"):
    client_dir = tmp_path / "prepared" / client
    manifest = read_manifest(client_dir)
    load = lambda sid, kind: np.load(client_dir / kind / f"{sid}.npy")  # noqa: E731
    return manifest, load


def test_grey_levels_disc_includes_cup(tmp_path):
    save_png(tmp_path / "src/images/a.png", rgb())
    save_png(tmp_path / "src/masks/a.png", disc_cup_levels())
    names, enc = MASK_PRESETS["grey-disc-cup"]
    prepare_images(tmp_path / "src", out_spec(tmp_path, image_size=SIZE, mask_size=SIZE), ImageOptions(names, enc))
    manifest, load = prepared(tmp_path)
    mask = load("a", "masks")
    assert manifest.class_names == ["disc", "cup"] and mask.shape == (2, SIZE, SIZE)
    assert mask[0].sum() == 400 and mask[1].sum() == 100 and (mask[0] >= mask[1]).all()
    image = load("a", "images")
    assert image.shape == (3, SIZE, SIZE) and np.array_equal(image, rgb().transpose(2, 0, 1))  # RGB / 255, exact


def test_palette_png_keeps_indices(tmp_path):
    from PIL import Image

    palette_mask = Image.fromarray(disc_cup_levels((0, 1, 2)), mode="P")
    palette_mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    save_png(tmp_path / "src/images/a.png", rgb())
    (tmp_path / "src/masks").mkdir(parents=True)
    palette_mask.save(tmp_path / "src/masks/a.png")
    prepare_images(tmp_path / "src", out_spec(tmp_path, mask_size=SIZE), ImageOptions(*MASK_PRESETS["palette-disc-cup"]))
    _, load = prepared(tmp_path)
    assert load("a", "masks").reshape(2, -1).sum(1).tolist() == [400, 100]


def test_rgb_level_mask_cup_is_zero(tmp_path):
    levels = disc_cup_levels((255, 128, 0))
    save_png(tmp_path / "src/images/a.png", rgb())
    save_png(tmp_path / "src/masks/a.png", np.stack([levels] * 3, -1))
    prepare_images(tmp_path / "src", out_spec(tmp_path, mask_size=SIZE), ImageOptions(*MASK_PRESETS["rgb-cup0-disc128"]))
    _, load = prepared(tmp_path)
    assert load("a", "masks").reshape(2, -1).sum(1).tolist() == [400, 100]


def test_separate_disc_and_cup_masks_nested(tmp_path):
    save_png(tmp_path / "src/images/a.png", rgb())
    rim = disc_cup_levels((0, 255, 0))  # disc mask drawn as a rim only
    cup = disc_cup_levels((0, 0, 255))
    save_png(tmp_path / "src/masks/disc/a.png", rim)
    save_png(tmp_path / "src/masks/cup/a.png", cup)
    options = ImageOptions(["disc", "cup"], MaskEncoding("nonzero"), nested=True)
    prepare_images(tmp_path / "src", out_spec(tmp_path, mask_size=SIZE), options)
    manifest, load = prepared(tmp_path)
    assert load("a", "masks").reshape(2, -1).sum(1).tolist() == [400, 100]
    assert manifest.samples[0].mask_source == "masks/disc/a.png,masks/cup/a.png"


def test_inverted_binary_needs_explicit_foreground(tmp_path):
    mask = np.full((SIZE, SIZE), 255, np.uint8)
    mask[5:9, 5:9] = 0  # 0 = organ
    save_png(tmp_path / "src/image/a.png", rgb()[..., 0])
    save_png(tmp_path / "src/mask/a.png", mask)
    prepare_images(tmp_path / "src", out_spec(tmp_path, mask_size=SIZE), ImageOptions(["prostate"], binary_encoding(0)))
    _, load = prepared(tmp_path)
    assert load("a", "masks").sum() == 16
    assert load("a", "images").shape == (1, 32, 32)  # grey stored once


def test_threshold_jpeg_disc_only(tmp_path):
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[10:30, 10:30] = 255
    save_png(tmp_path / "src/masks/a.jpg", mask, quality=70)  # lossy: values near 0 and 255
    save_png(tmp_path / "src/images/a.jpg", rgb())
    prepare_images(tmp_path / "src", out_spec(tmp_path, mask_size=SIZE), ImageOptions(*MASK_PRESETS["disc-threshold"]))
    manifest, load = prepared(tmp_path)
    assert manifest.class_names == ["disc"] and abs(int(load("a", "masks").sum()) - 400) <= 8
    with pytest.raises(DataValidationError, match="a.jpg: JPEG mask with the exact-value encoding 'nonzero'"):
        prepare_images(tmp_path / "src", out_spec(tmp_path, "default", mask_size=SIZE),
                       ImageOptions(*MASK_PRESETS["nonzero"]))  # the CLI's default encoding


def test_instance_tif_and_16bit_nifti_images(tmp_path):
    instances = np.zeros((SIZE, SIZE), np.uint16)
    instances[2:6, 2:6], instances[10:14, 10:14] = 1, 2
    (tmp_path / "src/images").mkdir(parents=True)
    (tmp_path / "src/masks").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "src/images/a.tif", rgb())
    tifffile.imwrite(tmp_path / "src/masks/a.tif", instances)
    save_nifti(tmp_path / "src/images/b.nii.gz", np.linspace(0, 4000, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE))
    save_nifti(tmp_path / "src/masks/b.nii.gz", (instances > 0).astype(np.uint8))
    prepare_images(tmp_path / "src", out_spec(tmp_path, image_size=SIZE, mask_size=SIZE), ImageOptions(["nuclei"], MaskEncoding("nonzero")))
    _, load = prepared(tmp_path)
    assert load("a", "masks").sum() == 32 and load("b", "masks").sum() == 32
    b = load("b", "images")
    assert b.shape == (1, SIZE, SIZE) and b.min() == 0 and b.max() == 255  # percentile clip + min-max


def test_case_regex_and_subsets(tmp_path):
    for subset in ("train", "test"):
        for stem in ("00_00", "00_01", "01_00"):
            save_png(tmp_path / f"src/{subset}/image/{stem}.png", rgb())
            save_png(tmp_path / f"src/{subset}/mask/{stem}.png", disc_cup_levels((0, 255, 255)))
    options = ImageOptions(["organ"], binary_encoding(255), case_regex=r"^(\d+)_")
    report = prepare_images(tmp_path / "src", out_spec(tmp_path), options)
    manifest, _ = prepared(tmp_path)
    assert report.samples == 6 and report.cases == 4
    assert {s.id: s.case_id for s in manifest.samples}["train__00_01"] == "train/00"


def test_tiling_covers_the_image_and_keeps_case(tmp_path):
    assert tile_boxes(1000, 1000, 256)[-1] == (744, 744, 256, 256) and len(tile_boxes(1000, 1000, 256)) == 16
    assert tile_boxes(100, 80, 256) == [(0, 0, 100, 80)]
    save_png(tmp_path / "src/images/a.png", rgb())
    save_png(tmp_path / "src/masks/a.png", disc_cup_levels((0, 255, 255)))
    report = prepare_images(tmp_path / "src", out_spec(tmp_path), ImageOptions(["o"], MaskEncoding("nonzero"), tile=16))
    manifest, _ = prepared(tmp_path)
    assert report.samples == 9 and {s.case_id for s in manifest.samples} == {"a"}
    assert manifest.samples[-1].tile == (24, 24, 16, 16)


def test_parse_levels():
    assert parse_levels("0=,1=disc,2=disc+cup", ["disc", "cup"]) == {0: (), 1: (0,), 2: (0, 1)}
    assert parse_levels("1:0,2:0,4:1", ["tumour"]) == {1: (), 2: (), 4: (0,)}
    with pytest.raises(ValueError, match="rim"):
        parse_levels("1=rim", ["disc"])


def test_a_parent_of_two_sites_is_refused_not_merged(tmp_path):
    for site in ("hospital-A", "hospital-B"):
        save_png(tmp_path / "src" / site / "images" / "a.png", rgb())
        save_png(tmp_path / "src" / site / "masks" / "a.png", np.full((SIZE, SIZE), 255, np.uint8))
    with pytest.raises(DataValidationError, match="2 sources \\(hospital-A, hospital-B\\).*--client"):
        prepare_images(tmp_path / "src", out_spec(tmp_path, mask_size=SIZE), ImageOptions(*MASK_PRESETS["binary"]))
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())
    report = prepare_images(tmp_path / "src" / "hospital-A", out_spec(tmp_path, "A", mask_size=SIZE),
                            ImageOptions(*MASK_PRESETS["binary"]))
    assert report.samples == 1
