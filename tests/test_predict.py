"""``fedfms predict``: geometry of NIfTI and PNG outputs, slicing along any axis, clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fedfms.cli import main
from fedfms.config import ModelConfig
from fedfms.models import CheckpointError, build_model, save_checkpoint
from fedfms.predict import PredictError, Predictor, predict_path

AFFINE = np.array([[0.0, -0.8, 0.1, 12.5], [0.9, 0.0, 0.0, -40.0], [0.0, 0.2, 2.5, 7.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-class MSA SAM (32 px input, 8 px logits) saved as a fedfms checkpoint folder."""
    cfg = ModelConfig(backbone="tiny", mode="msa", image_size=32, num_classes=2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run") / "best_model"
    save_checkpoint(folder, build_model(cfg), cfg)
    return folder


def _volume(path: Path, shape: tuple[int, ...] = (20, 17, 5)) -> np.ndarray:
    data = np.random.default_rng(0).normal(100, 30, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return data


def test_nifti_keeps_shape_affine_and_labels(checkpoint: Path, tmp_path: Path) -> None:
    _volume(tmp_path / "case.nii.gz")
    (out,) = predict_path(checkpoint, tmp_path / "case.nii.gz", tmp_path / "masks", progress=False)
    assert out == tmp_path / "masks" / "case.nii.gz"
    mask = nib.load(str(out))
    assert mask.shape == (20, 17, 5)
    np.testing.assert_allclose(mask.affine, AFFINE, atol=1e-6)
    source = nib.load(str(tmp_path / "case.nii.gz")).header
    assert mask.header.get_sform(coded=True)[1] == source.get_sform(coded=True)[1]
    assert mask.header.get_qform(coded=True)[1] == source.get_qform(coded=True)[1]
    values = np.asanyarray(mask.dataobj)
    assert values.dtype == np.uint8 and set(np.unique(values)) <= {0, 1, 2}


def test_nifti_multi_channel_and_neighbours(checkpoint: Path, tmp_path: Path) -> None:
    _volume(tmp_path / "case.nii", (12, 10, 6, 1))  # trailing axis of 1 is accepted
    (out,) = predict_path(checkpoint, tmp_path / "case.nii", tmp_path / "masks", channels="neighbours",
                          multi_channel=True, batch_size=4, progress=False)
    mask = nib.load(str(out))
    assert mask.shape == (12, 10, 6, 2) and out.name == "case.nii"
    assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}


class BrightIsForeground(nn.Module):
    """A stand-in model: class-0 logits = the image's first channel above 0.5, at 1/4 size."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, 1, S/4, S/4)
        return (F.avg_pool2d(images[:, :1], 4) - 0.5) * 50


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_masks_land_on_the_voxels_they_came_from(axis: int, tmp_path: Path) -> None:
    data = np.zeros((24, 20, 16), np.float32)
    data[4:16, 6:18, 3:11] = 1.0  # a bright box
    path = tmp_path / "box.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    predictor = Predictor(BrightIsForeground(), 32, 1, torch.device("cpu"), torch.float32, axis=axis, progress=False)
    (out,) = predictor.predict_volume(path, tmp_path)
    mask = np.asanyarray(nib.load(str(out)).dataobj)
    assert mask[6:14, 8:16, 5:9].all()  # the box's inside
    assert (mask == (data > 0.5)).mean() > 0.95  # only its border may blur


class Recording(BrightIsForeground):
    """BrightIsForeground that keeps every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(images.clone())
        return super().forward(images)


def _boxes(height: int, width: int) -> np.ndarray:
    """``(1, H, W)`` grey ramp background (< 0.4) with bright boxes, some across window borders."""
    image = np.tile(np.linspace(0.0, 0.4, width, dtype=np.float32), (height, 1))
    for y, x, h, w in [(10, 10, 30, 40), (50, 56, 60, 30), (150, 100, 40, 50), (90, 0, 20, 160)]:
        image[y : y + h, x : x + w] = 0.9
    return image[None]


def test_tiles_reach_the_model_at_the_scale_it_was_trained_on() -> None:
    """Trained on 64 px tiles stored at 32 px: every model input holds 64 px of the slice,
    e.g. the first window is the slice's top-left 64 x 64 stretched to 32 x 32."""
    model = Recording()
    image = _boxes(200, 160)
    predictor = Predictor(model, 32, 1, torch.device("cpu"), torch.float32, tile=64, batch_size=4, progress=False)
    predictor.segment([image])
    windows = torch.cat(model.inputs)
    assert windows.shape[1:] == (3, 32, 32) and len(windows) >= (200 // 64 + 1) * (160 // 64 + 1)
    first_tile = F.interpolate(torch.from_numpy(image[None, :, :64, :64]), size=(32, 32), mode="bilinear",
                               align_corners=False, antialias=True)[0, 0]
    torch.testing.assert_close(windows[0, 0, :-1, :-1], first_tile[:-1, :-1], atol=1.5 / 255, rtol=0)  # last row/col
    # see the next tile's pixels through the antialiasing kernel


def test_tiled_masks_are_seamless_and_in_place() -> None:
    image = _boxes(200, 160)
    truth = image[0] > 0.5
    tiled = Predictor(BrightIsForeground(), 32, 1, torch.device("cpu"), torch.float32, tile=64, progress=False)
    whole = Predictor(BrightIsForeground(), 32, 1, torch.device("cpu"), torch.float32, progress=False)
    mask = tiled.segment([image])[0, 0]
    assert mask.shape == (200, 160)
    assert mask[14:36, 14:46].all() and mask[94:106, 4:156].all()  # box insides, across window borders
    assert (mask == truth).mean() > 0.95  # only box borders blur (the stand-in's output grid is 8 px of the slice)
    assert (whole.segment([image])[0, 0] == truth).mean() < 0.85  # 200 px squeezed into 32: 25 px blocks


def test_tiled_prediction_with_a_trained_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    rgb = np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "slide.png")
    (out,) = predict_path(checkpoint, tmp_path / "slide.png", tmp_path / "masks", tile=40, progress=False)
    with Image.open(out) as png:
        assert png.size == (70, 90) and set(np.unique(np.asarray(png))) <= {0, 1, 2}
    with pytest.raises(PredictError, match="tile 0"):
        predict_path(checkpoint, tmp_path / "slide.png", tmp_path / "masks", tile=0)
    with pytest.raises(PredictError, match="overlap 1.0"):
        predict_path(checkpoint, tmp_path / "slide.png", tmp_path / "masks", tile=40, tile_overlap=1.0)


def test_png_in_png_out_of_the_same_size(checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "images"
    src.mkdir()
    rgb = np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "fundus.png")
    Image.fromarray(rgb[..., 0]).save(src / "grey.jpg")
    written = predict_path(checkpoint, src, tmp_path / "masks", progress=False)
    assert [p.name for p in written] == ["fundus.png", "grey.png"]
    for path in written:
        with Image.open(path) as png:
            assert png.size == (45, 30) and png.mode == "P"
            assert set(np.unique(np.asarray(png))) <= {0, 1, 2}
    per_class = predict_path(checkpoint, src / "fundus.png", tmp_path / "channels", multi_channel=True, progress=False)
    assert [p.name for p in per_class] == ["fundus_class1.png", "fundus_class2.png"]
    assert set(np.unique(np.asarray(Image.open(per_class[0])))) <= {0, 255}


def test_bad_files_are_named_and_good_ones_still_written(checkpoint: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(src / "good.png")
    (src / "truncated.nii.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(src / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.float32), np.eye(4)), str(src / "series.nii.gz"))
    (src / "notes.png").write_text("not an image")
    with pytest.raises(PredictError) as err:
        predict_path(checkpoint, src, tmp_path / "out", progress=False)
    message = str(err.value)
    assert "4 of 5 input(s) failed" in message
    assert f"{src / 'truncated.nii.gz'}: unreadable" in message and f"{src / 'notes.png'}: unreadable" in message
    assert f"{src / 'flat.nii.gz'}: wrong dimensionality" in message and "(8, 8, 4, 2)" in message
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]  # no partial files


def test_bad_checkpoints_and_paths_give_clear_errors(checkpoint: Path, tmp_path: Path) -> None:
    scan = tmp_path / "scan.nii.gz"
    _volume(scan, (8, 8, 2))
    with pytest.raises(CheckpointError, match="nowhere: checkpoint folder not found"):
        predict_path(tmp_path / "nowhere", scan, tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fedfms_model.json").write_text((checkpoint / "fedfms_model.json").read_text())
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        predict_path(broken, scan, tmp_path / "out")
    with pytest.raises(PredictError, match="missing.nii.gz: no such file"):
        predict_path(checkpoint, tmp_path / "missing.nii.gz", tmp_path / "out")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PredictError, match="notes.txt: unsupported file type"):
        predict_path(checkpoint, tmp_path / "notes.txt", tmp_path / "out")
    with pytest.raises(PredictError, match="would replace the inputs"):
        predict_path(checkpoint, scan, tmp_path)


def test_command_exits_with_the_message(checkpoint: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "scan.png").write_bytes(b"\x89PNG broken")
    monkeypatch.setattr(sys, "argv", ["fedfms", "predict", "--checkpoint", str(checkpoint), "-i",
                                      str(tmp_path / "scan.png"), "-o", str(tmp_path / "out"), "--no-progress"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("error: 1 of 1 input(s) failed") and "scan.png: unreadable" in err
