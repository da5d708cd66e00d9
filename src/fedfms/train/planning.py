"""nnU-Net planning for a run (FednnU-Net): each training site fingerprints its own training split
with nnunetv2's code, the server merges the fingerprints and plans once with nnunetv2's
``ExperimentPlanner``; the plans and ``dataset.json`` become ``model.nnunet.plan`` and travel with
the run's configuration and every checkpoint. Only statistics leave a site, never pixels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fedfms.config import ModelConfig, RunConfig
from fedfms.nnunet.fingerprint import SiteFingerprint, merge_fingerprints, samples_per_case, site_fingerprint
from fedfms.nnunet.planning import plan_experiment
from fedfms.nnunet.workspace import dataset_json, nnunet_case
from fedfms.train.sites import Site


def needs_plan(config: RunConfig) -> bool:
    """An nnU-Net run whose network has not been planned yet."""
    return config.model.arch == "nnunet" and config.model.nnunet.plan is None


def site_cases(site: Site, part: str, model: ModelConfig) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(id, data (3, 1, S, S), seg (1, 1, S, S))`` of ``part`` of ``site``, as nnU-Net reads cases."""
    dataset = site.dataset(part, model)
    for i in range(len(dataset)):
        data, seg = nnunet_case(dataset.load_image(i).numpy(), dataset.load_mask(i).numpy())
        yield dataset.sample_id(i), data, seg


def fingerprint_site(site: Site, model: ModelConfig, total_cases: int) -> SiteFingerprint:
    """The site's fingerprint of its training split, sampling as nnU-Net would from a data set of
    ``total_cases`` (the federation's training cases)."""
    cases = ((data, seg) for _, data, seg in site_cases(site, "train", model))
    return site_fingerprint(cases, site.manifest.class_names, samples_per_case(total_cases))


def plan_from_fingerprints(model: ModelConfig, fingerprints: Sequence[SiteFingerprint]) -> dict[str, Any]:
    """``model.nnunet.plan``: nnunetv2's plans for the merged fingerprints, and the ``dataset.json``."""
    dataset = dataset_json(fingerprints[0].class_names, sum(f.cases for f in fingerprints))
    plans = plan_experiment(merge_fingerprints(fingerprints), dataset, model.nnunet.gpu_memory_gb)
    return {"plans": plans, "dataset": dataset}


def with_plan(config: RunConfig, plan: dict[str, Any]) -> RunConfig:
    """``config`` with ``model.nnunet.plan`` set."""
    nnunet = config.model.nnunet.model_copy(update={"plan": plan})
    return config.model_copy(update={"model": config.model.model_copy(update={"nnunet": nnunet})})
