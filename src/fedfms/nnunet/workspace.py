"""nnU-Net v2's folders and settings for one job, and fedfms data in nnU-Net's terms.

nnunetv2 reads its folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) and two
settings (``nnUNet_n_proc_DA``: data-augmentation worker processes, ``nnUNet_compile``) from
environment variables at the moment it uses them. fedfms does not depend on the user's shell:
:func:`nnunet_environment` sets them for the duration of one job (planning, a site's
preprocessing, a local round) and restores what was there before.

Data mapping (:func:`nnunet_case`): a fedfms sample is an RGB (or grey, repeated) image and one
binary mask per class. nnU-Net sees the image as a 2D case of 3 channels (``(3, 1, H, W)``, 0-255,
spacing ``(999, 1, 1)`` as nnunetv2's ``NaturalImage2DIO`` reads a PNG) and the masks as one
label map. One class is nnU-Net's plain label training (softmax over background and the class);
several classes may overlap (optic cup inside disc), so they become nnU-Net regions: label value
``sum(2**c for the classes present)``, region ``c`` = the labels with bit ``c`` set (sigmoid per
region), see :func:`dataset_json`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

DATASET_NAME = "Dataset001_fedfms"
CONFIGURATION = "2d"
SPACING_2D = (999.0, 1.0, 1.0)


@contextmanager
def nnunet_environment(root: Path, augmentation_workers: int = 0, compile_network: bool = False) -> Iterator[Path]:
    """nnunetv2's folders under ``root`` (``raw``, ``preprocessed``, ``results``) and its worker and
    compile settings, for the ``with`` block only. Yields ``root``."""
    values = {"nnUNet_raw": root / "raw", "nnUNet_preprocessed": root / "preprocessed",
              "nnUNet_results": root / "results", "nnUNet_n_proc_DA": augmentation_workers,
              "nnUNet_compile": "true" if compile_network else "false"}
    before = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield root
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def uses_regions(num_classes: int) -> bool:
    """Several fedfms classes (which may overlap) train as nnU-Net regions, one as a plain label."""
    return num_classes > 1


def dataset_json(class_names: Sequence[str], num_training: int) -> dict[str, Any]:
    """nnU-Net's ``dataset.json`` for fedfms cases of these classes (see the module docstring)."""
    if uses_regions(len(class_names)):
        combinations = range(1, 2 ** len(class_names))
        labels: dict[str, Any] = {"background": 0}
        labels.update({name: [v for v in combinations if v >> c & 1] for c, name in enumerate(class_names)})
        order: dict[str, Any] = {"regions_class_order": [2**c for c in range(len(class_names))]}
    else:
        labels, order = {"background": 0, class_names[0]: 1}, {}
    return {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": labels, **order,
            "numTraining": int(num_training), "file_ending": ".png",
            "overwrite_image_reader_writer": "NaturalImage2DIO"}


def nnunet_case(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fedfms sample as nnU-Net reads one.

    image: ``(3, H, W)`` float in [0, 1]; mask: ``(C, H, W)`` in {0, 1}. Returns the image
    ``(3, 1, H, W)`` float32 in [0, 255] and the label map ``(1, 1, H, W)`` int16.
    """
    data = np.asarray(image, dtype=np.float32)[:, None] * 255.0
    binary = np.asarray(mask) > 0.5
    if uses_regions(binary.shape[0]):
        bits = (1 << np.arange(binary.shape[0], dtype=np.int16))[:, None, None]
        labels = (binary * bits).sum(axis=0)
    else:
        labels = binary[0]
    return data, labels.astype(np.int16)[None, None]
