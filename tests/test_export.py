"""``fedfms export``: ONNX (onnxruntime) and TorchScript give the PyTorch model's logits on real
images at batch 1 and 3; the metadata is predict's; nnU-Net and bad destinations are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import fedfms
from fedfms.cli import app
from fedfms.config import ModelConfig
from fedfms.data.prepare.intensity import image_to_unit
from fedfms.data.prepare.io import read_image
from fedfms.data.validate import Problems
from fedfms.export import METADATA, ExportError, export_checkpoint
from fedfms.models import build_model, load_checkpoint, save_checkpoint
from fedfms.predict import load_predictor

TOLERANCE = 1e-4


def _checkpoint(folder: Path, cfg: ModelConfig) -> Path:
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # trained-looking branches: LoRA's B and the adapters start at zero
        for name, p in model.named_parameters():
            if "lora" in name or "adapter" in name:
                p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(folder, model, cfg)
    return folder


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2-class LoRA SAM at 64 px (16 px logits)."""
    return _checkpoint(tmp_path_factory.mktemp("tiny") / "best_model",
                       ModelConfig(backbone="tiny", mode="lora", image_size=64, num_classes=2))


@pytest.fixture(scope="module")
def unet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("unet") / "best_model",
                       ModelConfig(arch="unet", image_size=64, unet={"channels": (8, 16, 32)}))


def _real_inputs(shared_data: Path, checkpoint: Path, count: int) -> torch.Tensor:
    """``count`` brain MRI slices as ``fedfms predict`` feeds them to the model: ``(count, 3, S, S)``."""
    predictor = load_predictor(checkpoint, device="cpu", progress=False)
    paths = sorted((shared_data / "brain-lgg").glob("*/*/*[0-9].tif"))[:count]
    problems = Problems()
    slices = [image_to_unit(read_image(p, problems)) for p in paths]
    assert not problems and len(slices) == count
    return predictor.model_input(slices)


def _reference(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return model.eval()(images).numpy()


def _onnx_logits(folder: Path, images: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images.numpy()})
    return logits


def _torchscript_logits(folder: Path, images: torch.Tensor) -> np.ndarray:
    module = torch.jit.load(str(folder / "model.ts"))
    with torch.no_grad():
        return module(images).numpy()


RUNTIMES = {"onnx": _onnx_logits, "torchscript": _torchscript_logits}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model", ["tiny_sam", "unet"])
def test_exported_logits_match_pytorch_at_batch_1_and_3(model: str, fmt: str, shared_data: Path, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    checkpoint = request.getfixturevalue(model)
    metadata = export_checkpoint(checkpoint, fmt, tmp_path / "export")
    images = _real_inputs(shared_data, checkpoint, 3)
    for batch in (images[:1], images):
        reference = _reference(checkpoint, batch)
        exported = RUNTIMES[fmt](tmp_path / "export", batch)
        assert exported.shape == reference.shape == (len(batch), *metadata["predict"]["model_output"]["shape"][1:])
        np.testing.assert_allclose(exported, reference, atol=TOLERANCE, rtol=0)
    assert np.abs(reference).max() > 10 * TOLERANCE  # the comparison is not of near-zero outputs


@pytest.mark.slow
def test_pretrained_litemedsam_msa_torchscript_parity(shared_data: Path, tmp_path: Path) -> None:
    """LiteMedSAM (the real pretrained weights) with trained MSA adapters: the whole segmenter is
    exported (its file is the full model's size, not the adapters')."""
    checkpoint = _checkpoint(tmp_path / "lite" / "best_model", ModelConfig(backbone="litemedsam", mode="msa"))
    metadata = export_checkpoint(checkpoint, "torchscript", tmp_path / "export")
    images = _real_inputs(shared_data, checkpoint, 3)
    for batch in (images[:1], images):
        np.testing.assert_allclose(_torchscript_logits(tmp_path / "export", batch), _reference(checkpoint, batch),
                                   atol=TOLERANCE, rtol=0)
    parameters = metadata["parameters"]
    assert parameters["fine_tuned"] < parameters["total"]
    assert metadata["file_bytes"] > 4 * parameters["total"] * 0.95  # fp32 weights of every parameter
    assert metadata["model"]["mode"] == "msa" and "whole fine-tuned segmenter" in metadata["exported"]


def test_metadata_is_predicts_rules_and_the_runs_class_names(unet: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    checkpoint = _checkpoint(run / "best_model", ModelConfig(arch="unet", image_size=64, num_classes=2,
                                                            unet={"channels": (8, 16)}))
    (run / "results.json").write_text(json.dumps({"class_names": ["disc", "cup"]}))
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(checkpoint), "--format", "torchscript",
                                      "--out", str(tmp_path / "ts")])
    assert result.exit_code == 0, result.output
    assert "model.ts" in result.output and "MB" in result.output
    metadata = json.loads((tmp_path / "ts" / METADATA).read_text())
    rules = metadata["predict"]
    expected = load_predictor(checkpoint, device="cpu", precision="fp32").describe(64, ["disc", "cup"])
    assert rules == json.loads(json.dumps(expected))
    assert rules["class_names"] == ["disc", "cup"] and rules["postprocess"]["threshold"] == 0.5
    assert rules["precision"] == "float32"
    assert rules["model_input"]["shape"] == ["B", 3, 64, 64] and rules["resize_to_input"]["antialias"] is True


def test_refusals_leave_nothing_half_written(unet: Path, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_checkpoint(unet, "onnx", occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match="expected one of onnx, torchscript, monai-bundle"):
        export_checkpoint(unet, "tflite", tmp_path / "x")
    nnunet = tmp_path / "nnunet"
    nnunet.mkdir()
    (nnunet / "fedfms_model.json").write_text(json.dumps({"arch": "nnunet", "image_size": 64, "metadata": {}}))
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(nnunet), "--format", "onnx",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert isinstance(result.exception, ExportError) and "nnunetv2's predictor" in str(result.exception)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_monai_bundle_run_writes_predicts_masks_for_a_png_and_a_nifti(tiny_sam: Path, shared_data: Path,
                                                                       tmp_path: Path) -> None:
    """``python -m monai.bundle run`` on a real prostate MRI slice (PNG) and a NIfTI volume made
    of real slices: the same masks, bit for bit, as ``fedfms predict`` with the checkpoint (a
    tiny SAM whose logits are centred on the threshold, so that many pixels are borderline)."""
    import nibabel as nib
    from PIL import Image

    from fedfms.predict import predict_path

    slices = sorted((shared_data / "prostate-slices").glob("*/train/image/*.png"))[:3]
    model, cfg = load_checkpoint(tiny_sam)
    images = load_predictor(tiny_sam, device="cpu").model_input([image_to_unit(read_image(slices[0], Problems()))])
    with torch.no_grad():  # logits of a trained model's spread (std 10), about half above the threshold
        logits = model.eval()(images)[0].flatten(1)  # (C, M * M)
        scale = 10.0 / logits.std(dim=1)
        model.head.weight.mul_(scale[:, None, None, None])
        model.head.bias.sub_(logits.median(dim=1).values + 1e-3).mul_(scale)
    checkpoint = tmp_path / "run" / "best_model"
    save_checkpoint(checkpoint, model, cfg)
    bundle = tmp_path / "bundle"
    export_checkpoint(checkpoint, "monai-bundle", bundle)
    assert {"configs/inference.json", "configs/metadata.json", "models/model.ts", METADATA} <= {
        str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "slice.png").write_bytes(slices[0].read_bytes())
    volume = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32)[::4, ::4] for p in slices], axis=-1)
    nib.save(nib.Nifti1Image(volume * 3.0 + 10.0, np.diag([0.5, 0.5, 3.0, 1.0])), str(scans / "volume.nii.gz"))
    env = {**os.environ, "PYTHONPATH": str(Path(fedfms.__file__).parents[1])}
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                          str(bundle / "configs" / "inference.json"), "--meta_file", str(bundle / "configs" / "metadata.json"),
                          "--bundle_root", str(bundle), "--input_path", str(scans), "--output_dir", str(tmp_path / "monai")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    predict_path(checkpoint, scans, tmp_path / "fedfms", progress=False, precision="fp32")
    png = [np.asarray(Image.open(tmp_path / folder / "slice.png")) for folder in ("monai", "fedfms")]
    nifti = [nib.load(str(tmp_path / folder / "volume.nii.gz")) for folder in ("monai", "fedfms")]
    np.testing.assert_array_equal(*png)
    np.testing.assert_array_equal(*(np.asanyarray(n.dataobj) for n in nifti))
    np.testing.assert_array_equal(nifti[0].affine, nifti[1].affine)
    assert png[0].shape == (384, 384) and nifti[0].shape == volume.shape
    assert set(np.unique(png[0])) == {0, 1, 2}  # labels of both classes and background: a real comparison
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
    assert metadata["required_packages_version"]["fedfms"] == fedfms.__version__
