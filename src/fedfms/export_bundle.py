"""The MONAI bundle of ``fedfms export --format monai-bundle`` (MONAI Deploy, MONAI Label,
``python -m monai.bundle run``)::

    models/model.ts           the traced TorchScript model (:func:`fedfms.export.export_torchscript`)
    configs/metadata.json     MONAI's metadata: versions, network_data_format (input, output, classes)
    configs/inference.json    the inference workflow

Decision: ``inference.json`` does not restate ``predict``'s preprocessing in MONAI transforms (a
second copy of the rules that could drift, and not the same pixels: MONAI's resize does not
antialias like fedfms', its image reader transposes PNGs). Its ``predictor`` is
:class:`fedfms.predict.Predictor` around the bundle's ``model.ts`` with ``predict``'s defaults,
so the bundle writes exactly ``fedfms predict``'s masks; ``fedfms`` is a required package in
``metadata.json``. A tool without fedfms takes ``models/model.ts`` and the rules written out in
``fedfms_export.json``.

Run it on a file or a folder of NIfTI volumes and 2D images::

    python -m monai.bundle run --config_file BUNDLE/configs/inference.json \\
        --meta_file BUNDLE/configs/metadata.json --bundle_root BUNDLE --input_path SCAN --output_dir MASKS
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL_FILE = "models/model.ts"
#: Predictor settings that are not rules of the output (how much to show, how many slices at once).
_RUNTIME_SETTINGS = ("progress", "batch_size")


def predictor_settings() -> dict[str, Any]:
    """``fedfms predict``'s default settings (the fields of :class:`fedfms.predict.Predictor`)."""
    from fedfms.predict import Predictor

    return {f.name: f.default for f in dataclasses.fields(Predictor)
            if f.default is not dataclasses.MISSING and f.name not in _RUNTIME_SETTINGS}


def inference_config(cfg: Any) -> dict[str, Any]:
    """``configs/inference.json``: ``input_path`` (a file or a folder) -> masks in ``output_dir``."""
    return {
        "imports": ["$import pathlib", "$import torch", "$from fedfms.predict import find_inputs"],
        "bundle_root": ".",
        "input_path": "",
        "output_dir": "$@bundle_root + '/predictions'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": f"$torch.jit.load(@bundle_root + '/{MODEL_FILE}', map_location=@device).eval()",
        "predictor": {"_target_": "fedfms.predict.Predictor", "model": "@network_def", "image_size": cfg.image_size,
                      "num_classes": cfg.num_classes, "device": "@device", "dtype": "$torch.float32",
                      "progress": False, **predictor_settings()},
        "inputs": "$find_inputs(pathlib.Path(@input_path))",
        "initialize": ["$pathlib.Path(@output_dir).mkdir(parents=True, exist_ok=True)"],
        "run": ["$[@predictor.predict_file(path, pathlib.Path(@output_dir)) for path in @inputs]"],
        "finalize": [],
    }


def bundle_metadata(cfg: Any, class_names: list[str]) -> dict[str, Any]:
    """``configs/metadata.json`` in MONAI's bundle metadata layout."""
    import monai
    import numpy
    import torch

    import fedfms

    return {
        "version": "1.0.0",
        "changelog": {"1.0.0": "exported by fedfms export"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"fedfms": fedfms.__version__},
        "name": f"fedfms {cfg.backbone if cfg.arch == 'sam' else cfg.arch} segmenter",
        "task": "2D segmentation of images and of NIfTI volumes slice by slice",
        "description": ("A segmenter fine-tuned with fedfms (federated). Input: images in [0, 1] stretched to "
                        f"{cfg.image_size} px; output: one logit map per class. inference.json applies "
                        "fedfms predict's preprocessing and thresholds; see fedfms_export.json."),
        "authors": "fedfms export",
        "copyright": "the owners of the training data and of the fine-tuned model",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "any", "num_channels": 3,
                                 "spatial_shape": [cfg.image_size, cfg.image_size], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": False,
                                 "channel_def": {"0": "R", "1": "G", "2": "B"}}},
            "outputs": {"pred": {"type": "image", "format": "logits", "num_channels": cfg.num_classes,
                                 "spatial_shape": [cfg.mask_size, cfg.mask_size], "dtype": "float32",
                                 "value_range": [], "is_patch_data": False,
                                 "channel_def": {str(c): name for c, name in enumerate(class_names)}}},
        },
    }


def write_bundle(folder: Path, cfg: Any, class_names: list[str], write_model: Callable[[Path], None]) -> str:
    """The bundle's three files in ``folder``; ``write_model(path)`` writes the TorchScript model.
    Returns the model file's path inside the bundle."""
    (folder / "models").mkdir()
    (folder / "configs").mkdir()
    write_model(folder / MODEL_FILE)
    (folder / "configs" / "inference.json").write_text(json.dumps(inference_config(cfg), indent=2) + "\n")
    (folder / "configs" / "metadata.json").write_text(json.dumps(bundle_metadata(cfg, class_names), indent=2) + "\n")
    return MODEL_FILE
