"""``fedfms predict``: geometry of NIfTI and PNG outputs, slicing along any axis, clear errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from typer import Typer
from typer.testing import CliRunner

from fedfms.config import ModelConfig
from fedfms.models import CheckpointError, build_model, save_checkpoint
from fedfms.predict import PredictError, Predictor, predict_command, predict_path

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


def test_command_exits_with_the_message(checkpoint: Path, tmp_path: Path) -> None:
    app = Typer()
    app.command()(predict_command)
    (tmp_path / "scan.png").write_bytes(b"\x89PNG broken")
    result = CliRunner().invoke(app, ["--checkpoint", str(checkpoint), "-i", str(tmp_path / "scan.png"),
                                      "-o", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1
    assert "scan.png: unreadable" in result.output
