"""``fedfms export``: a trained model (a fedfms checkpoint folder) in the formats other tools load.

* ``onnx``: ``model.onnx`` from ``torch.onnx``'s dynamo exporter (one file, weights inside), for
  onnxruntime, Triton and inference servers;
* ``torchscript``: ``model.ts`` from ``torch.jit.trace``, loadable by ``torch.jit.load`` without
  fedfms;
* ``monai-bundle``: a MONAI bundle (:mod:`fedfms.export_bundle`) for MONAI Deploy and MONAI Label.

The exported graph is the model itself: ``images (B, 3, S, S)`` float32 in [0, 1] -> logits
``(B, C, M, M)``, ``B`` dynamic. Every exported folder holds ``fedfms_export.json``: the rules
``fedfms predict`` applies around that graph (intensity scaling, resizing, sigmoid, threshold,
labels, class names: :meth:`fedfms.predict.Predictor.describe`, with ``predict``'s defaults) and
the model facts (backbone, mode, parameter counts, file size).

Adapter modes (``msa``, ``lora``) and ``decoder``: the exported model is always the whole
fine-tuned segmenter, the frozen foundation model with its trained adapters or LoRA branches
as they run in fedfms (kept as separate modules, not folded into the encoder's weights), so
its size is the full model's, not the adapters' few megabytes; ``fedfms_export.json`` states
both. nnU-Net is refused: its prediction is nnunetv2's predictor (cropping, normalisation and
sliding windows in NumPy, per image), not one traceable network.

Writing is atomic: files go to a temporary folder beside ``--out``, which takes its name only
once every file is written and checked; an existing non-empty ``--out`` is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from fedfms.errors import FedfmsError

FORMATS = ("onnx", "torchscript", "monai-bundle")
METADATA = "fedfms_export.json"
ONNX_FILE = "model.onnx"
TORCHSCRIPT_FILE = "model.ts"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
#: Batch of the example input: 2, since an example batch of 1 lets the exporter treat it as a constant.
EXAMPLE_BATCH = 2


class ExportError(FedfmsError, ValueError):
    """A model that cannot be exported, or a bad destination; names the file or the model."""


def class_names_of(checkpoint: Path, num_classes: int) -> list[str]:
    """The class names of the run the checkpoint comes from (``results.json`` beside a run's
    ``best_model``), else ``class_1 .. class_C``."""
    results = Path(checkpoint).parent / "results.json"
    try:
        names = json.loads(results.read_text())["class_names"]
    except (OSError, ValueError, KeyError, TypeError):
        names = None
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    return [f"class_{c + 1}" for c in range(num_classes)]


def export_metadata(checkpoint: Path, fmt: str, model: Any, cfg: Any, folder: Path, model_file: str) -> dict[str, Any]:
    """The content of ``fedfms_export.json`` for ``model`` exported into ``folder/model_file``:
    ``predict``'s rules with its default settings, the model's configuration and sizes."""
    import torch

    from fedfms.export_bundle import predictor_settings
    from fedfms.models import trainable_state
    from fedfms.predict import Predictor

    predictor = Predictor(model, cfg.image_size, cfg.num_classes, torch.device("cpu"), torch.float32,
                          **predictor_settings())
    size = (folder / model_file).stat().st_size
    return {
        "format": fmt,
        "file": model_file,
        "file_bytes": size,
        "source_checkpoint": str(checkpoint),
        "model": cfg.model_dump(mode="json", exclude={"checkpoint"}),
        "parameters": {"total": sum(p.numel() for p in model.parameters()),
                       "fine_tuned": sum(t.numel() for t in trainable_state(model).values())},
        "exported": (f"the whole fine-tuned segmenter ({cfg.mode} mode: foundation model, trained branches and "
                     f"class head, branches kept as separate layers), {size / 1e6:.1f} MB"),
        "predict": predictor.describe(cfg.mask_size, class_names_of(checkpoint, cfg.num_classes)),
    }


def load_for_export(checkpoint: Path) -> tuple[Any, Any]:
    """The checkpoint's model in eval mode on CPU in fp32, and its configuration; nnU-Net is
    refused before its weights are read."""
    from fedfms.models import CheckpointError, load_checkpoint, read_checkpoint_config

    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: checkpoint folder not found (expected a fedfms checkpoint "
                              "folder with fedfms_model.json and model.safetensors, e.g. <run_dir>/best_model)")
    stored, _ = read_checkpoint_config(checkpoint)
    if stored.arch == "nnunet":
        raise ExportError(f"{checkpoint}: nnU-Net models cannot be exported: their prediction is nnunetv2's "
                          "predictor (cropping, the plan's normalisation and sliding windows in NumPy, per image), "
                          "not one network graph; use `fedfms predict`")
    model, cfg = load_checkpoint(checkpoint)
    return model.eval().float(), cfg


def example_input(cfg: Any) -> Any:
    """A ``(2, 3, S, S)`` input in [0, 1] to trace the model with (fixed seed)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.rand(EXAMPLE_BATCH, 3, cfg.image_size, cfg.image_size, generator=generator)


def export_onnx(model: Any, example: Any, path: Path) -> None:
    """``model`` -> one ONNX file at ``path`` (dynamo exporter, batch dynamic, weights inside)."""
    import torch

    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), external_data=False,
                      verbose=False)


def export_torchscript(model: Any, example: Any, path: Path) -> None:
    """``model`` -> a TorchScript module traced at ``path`` (the batch size stays free)."""
    import torch

    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))


def _staging(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out}: already exists and is not an empty folder; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def export_checkpoint(checkpoint: Path, fmt: str, out: Path) -> dict[str, Any]:
    """Export the fedfms checkpoint folder ``checkpoint`` as ``fmt`` into the folder ``out``;
    returns the content of its ``fedfms_export.json``."""
    from fedfms.export_bundle import write_bundle

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    checkpoint, out = Path(checkpoint), Path(out)
    model, cfg = load_for_export(checkpoint)
    staging = _staging(out)
    try:
        example = example_input(cfg)
        if fmt == "onnx":
            export_onnx(model, example, staging / ONNX_FILE)
            model_file = ONNX_FILE
        elif fmt == "torchscript":
            export_torchscript(model, example, staging / TORCHSCRIPT_FILE)
            model_file = TORCHSCRIPT_FILE
        else:
            model_file = write_bundle(staging, cfg, class_names_of(checkpoint, cfg.num_classes),
                                      lambda path: export_torchscript(model, example, path))
        metadata = export_metadata(checkpoint, fmt, model, cfg, staging, model_file)
        (staging / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return metadata


def export_command(
    checkpoint: Annotated[Path, typer.Option(help="fedfms checkpoint folder, e.g. runs/NAME/best_model.")],
    format: Annotated[str, typer.Option("--format", help="onnx | torchscript | monai-bundle.")],
    out: Annotated[Path, typer.Option(help="Folder to create for the exported model and its fedfms_export.json.")],
) -> None:
    """Export a trained model for other tools: ONNX (onnxruntime, inference servers), TorchScript
    (``torch.jit.load``) or a MONAI bundle (MONAI Deploy, MONAI Label). The graph maps images
    ``(B, 3, S, S)`` in [0, 1] to logits ``(B, C, M, M)``; ``fedfms_export.json`` beside it
    says how ``fedfms predict`` prepares inputs and turns logits into masks."""
    metadata = export_checkpoint(checkpoint, format, out)
    typer.echo(f"{format} model written to {out / metadata['file']} ({metadata['file_bytes'] / 1e6:.1f} MB, "
               f"{metadata['parameters']['total']:,} parameters, {metadata['parameters']['fine_tuned']:,} fine-tuned); "
               f"preprocessing and labels in {out / METADATA}")
