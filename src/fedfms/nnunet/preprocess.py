"""A site's training cases through nnunetv2's ``DefaultPreprocessor``, saved where its trainer
reads them (``<workspace>/preprocessed/<dataset>/<data identifier>/``, blosc2 files as
``nnUNetv2_preprocess`` writes them). Done once per plan and split: a marker file beside the folder
records both; the folder is written beside the live one, renamed into place and only then
marked, so a killed preprocessing is redone, never half used."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from fedfms.io import atomic_write_text
from fedfms.nnunet.workspace import CONFIGURATION, DATASET_NAME, SPACING_2D

MARKER_SUFFIX = ".fedfms.json"


def preprocessed_folder(workspace: Path, plans: dict[str, Any]) -> Path:
    """Where nnUNetTrainer, run in ``workspace``, reads the cases of ``plans``' 2D configuration."""
    identifier = PlansManager(plans).get_configuration(CONFIGURATION).data_identifier
    return workspace / "preprocessed" / DATASET_NAME / identifier


def preprocess_cases(cases: Iterable[tuple[str, np.ndarray, np.ndarray]], plans: dict[str, Any],
                     dataset: dict[str, Any], workspace: Path, key: str) -> Path:
    """Preprocess ``(id, data (3, 1, H, W), seg (1, 1, H, W))`` cases unless the folder already
    holds them for this plan and ``key`` (a digest of the cases' source). Returns the folder."""
    target = preprocessed_folder(workspace, plans)
    stamp = {"plans": hashlib.sha256(json.dumps(plans, sort_keys=True).encode()).hexdigest(), "cases": key}
    marker = target.with_name(target.name + MARKER_SUFFIX)
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(CONFIGURATION)
    patch = tuple(configuration.patch_size)
    preprocessor = DefaultPreprocessor(verbose=False)
    for case_id, data, seg in cases:
        with contextlib.redirect_stdout(io.StringIO()):
            data, seg, properties = preprocessor.run_case_npy(data, seg, {"spacing": list(SPACING_2D)},
                                                              plans_manager, configuration, dataset)
        data, seg = data.astype(np.float32, copy=False), seg.astype(np.int16, copy=False)
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, str(staging / case_id), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_seg, blocks_seg=blocks_seg)
    marker.unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    atomic_write_text(marker, json.dumps(stamp))
    return target
