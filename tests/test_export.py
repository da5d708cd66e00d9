"""``fedfms export``: ONNX (onnxruntime) and TorchScript give the PyTorch model's logits on real
images at batch 1 and 3; the metadata is predict's; nnU-Net and bad destinations are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

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
    expected = load_predictor(checkpoint, device="cpu").describe(64, ["disc", "cup"])
    assert rules == json.loads(json.dumps(expected))
    assert rules["class_names"] == ["disc", "cup"] and rules["postprocess"]["threshold"] == 0.5
    assert rules["model_input"]["shape"] == ["B", 3, 64, 64] and rules["resize_to_input"]["antialias"] is True


def test_refusals_leave_nothing_half_written(unet: Path, tmp_path: Path) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_checkpoint(unet, "onnx", occupied)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]
    with pytest.raises(ExportError, match="expected one of onnx, torchscript"):
        export_checkpoint(unet, "tflite", tmp_path / "x")
    nnunet = tmp_path / "nnunet"
    nnunet.mkdir()
    (nnunet / "fedfms_model.json").write_text(json.dumps({"arch": "nnunet", "image_size": 64, "metadata": {}}))
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(nnunet), "--format", "onnx",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert isinstance(result.exception, ExportError) and "nnunetv2's predictor" in str(result.exception)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
