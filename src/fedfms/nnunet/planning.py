"""Planning with nnunetv2's ``ExperimentPlanner`` on a merged (federated) fingerprint.

The planner reads ``dataset.json`` and ``dataset_fingerprint.json`` from nnU-Net's folders; here
they are written to a scratch folder that exists for the call only, so the plans come from
nnunetv2's own rules (topology, patch and batch size for ``gpu_memory_gb``, normalisation scheme,
resampling) and nothing of them is re-stated in fedfms. fedfms' prepared samples are 2D (volumes
are sliced when a client is prepared, at spacing ``(999, 1, 1)``), so the planner produces the
``2d`` configuration only: a 3D full-resolution configuration needs the volumes, which a
prepared client does not keep.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

from fedfms.nnunet.workspace import CONFIGURATION, DATASET_NAME, SPACING_2D, dataset_json, nnunet_environment


def plan_experiment(fingerprint: dict[str, Any], dataset: dict[str, Any], gpu_memory_gb: float) -> dict[str, Any]:
    """nnU-Net's plans (its ``nnUNetPlans.json``, JSON-compatible) for ``fingerprint`` and the
    ``dataset.json`` ``dataset``, with a GPU memory target of ``gpu_memory_gb``."""
    with (tempfile.TemporaryDirectory(prefix="fedfms-nnunet-plan-") as tmp,
          nnunet_environment(Path(tmp), augmentation_workers=1) as root):  # the planner sets torch threads to it
        raw = root / "raw" / DATASET_NAME
        preprocessed = root / "preprocessed" / DATASET_NAME
        raw.mkdir(parents=True)
        preprocessed.mkdir(parents=True)
        example = {"case": {"images": ["case_0000.png"], "label": "case.png"}}  # names only: never read
        (raw / "dataset.json").write_text(json.dumps({**dataset, "dataset": example}))
        (preprocessed / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
        planner = ExperimentPlanner(DATASET_NAME, gpu_memory_target_in_gb=gpu_memory_gb)
        with contextlib.redirect_stdout(io.StringIO()):
            planner.plan_experiment()
        plans = json.loads((preprocessed / f"{planner.plans_identifier}.json").read_text())
    if CONFIGURATION not in plans["configurations"]:
        raise ValueError(f"nnU-Net's planner gave no {CONFIGURATION} configuration: {sorted(plans['configurations'])}")
    return plans


def nominal_plan(image_size: int, class_names: Sequence[str], gpu_memory_gb: float, cases: int = 100
                 ) -> dict[str, Any]:
    """A plan without data (model listings, benchmarks): ``cases`` images of ``image_size``
    filling the frame, unit intensity statistics (which z-score normalisation ignores). Returns
    ``{"plans": ..., "dataset": ...}`` like a run's ``model.nnunet.plan``."""
    unit = {"mean": 0.0, "median": 0.0, "std": 1.0, "min": -1.0, "max": 1.0, "percentile_99_5": 1.0,
            "percentile_00_5": -1.0}
    fingerprint = {"spacings": [list(SPACING_2D)] * cases, "shapes_after_crop": [[1, image_size, image_size]] * cases,
                   "foreground_intensity_properties_per_channel": {str(c): unit for c in range(3)},
                   "median_relative_size_after_cropping": 1.0}
    dataset = dataset_json(class_names, cases)
    return {"plans": plan_experiment(fingerprint, dataset, gpu_memory_gb), "dataset": dataset}
