"""``fedfms predict --overlay``: each input with the predicted classes outlined, for a person
checking the masks; and no progress-bar frames when the output is not a terminal."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from typer import Typer
from typer.testing import CliRunner

from fedfms.config import ModelConfig
from fedfms.models import build_model, save_checkpoint
from fedfms.predict import OUTLINE_COLOURS, overlay_image, predict_command


def test_the_outline_is_drawn_on_the_border_of_each_class_only() -> None:
    image = np.empty((3, 20, 30), np.float32)
    image[:] = np.array([0.8, 0.3, 0.2])[:, None, None]  # red-orange tissue
    masks = np.zeros((2, 20, 30), bool)
    masks[0, 5:15, 5:12] = True
    masks[1, 2:6, 20:28] = True
    out = overlay_image(image, masks)
    changed = np.any(out != np.round(np.moveaxis(image, 0, -1) * 255), axis=-1)
    border = masks[0] & ~np.pad(masks[0, 6:14, 6:11], ((6, 6), (6, 19)))
    assert np.array_equal(changed & masks[0], border) and (out[border] == OUTLINE_COLOURS[0]).all()
    assert (out[2, 20:28] == OUTLINE_COLOURS[1]).all() and not changed[3:5, 21:27].any()
    assert not changed[~masks.any(axis=0)].any()
    grey = overlay_image(image[:1], masks)  # a grey scan gets the same outlines in colour
    assert grey.shape == (20, 30, 3) and (grey[border] == OUTLINE_COLOURS[0]).all()


def test_predict_writes_an_overlay_per_image_and_volume_and_no_bar_frames(tmp_path: Path) -> None:
    cfg = ModelConfig(backbone="tiny", mode="msa", image_size=32, num_classes=1)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "model", build_model(cfg), cfg)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 45, 3), dtype=np.uint8)).save(src / "polyp.png")
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((20, 17, 5)).astype(np.float32), np.eye(4)),
             src / "scan.nii.gz")
    app = Typer()
    app.command()(predict_command)
    result = CliRunner().invoke(app, ["--checkpoint", str(tmp_path / "model"), "-i", str(src),
                                      "-o", str(tmp_path / "out"), "--overlay", "--threshold", "0.01"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and f"overlays in {tmp_path / 'out' / 'overlays'}" in result.output
    overlays = sorted((tmp_path / "out" / "overlays").iterdir())
    assert [p.name for p in overlays][0] == "polyp.png" and overlays[1].name.startswith("scan_slice")
    with Image.open(overlays[0]) as picture:
        assert picture.mode == "RGB" and picture.size == (45, 30)
    with Image.open(overlays[1]) as picture:
        assert picture.mode == "RGB" and picture.size == (17, 20)
