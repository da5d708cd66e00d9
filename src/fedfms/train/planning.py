"""nnU-Net planning for a run: each training client fingerprints its own training split, the
fingerprints are merged (weighted by samples) and nnU-Net's 2D rules plan the network from the
merged one, as FednnU-Net does. Only statistics leave a site, never pixels."""

from __future__ import annotations

from collections.abc import Sequence

from fedfms.config import ModelConfig, RunConfig
from fedfms.models.baselines import DataFingerprint, fingerprint_images, merge_fingerprints, plan_nnunet_2d
from fedfms.train.sites import Site


def needs_plan(config: RunConfig) -> bool:
    """An nnU-Net run whose network has not been planned yet."""
    return config.model.arch == "nnunet" and config.model.nnunet_plan is None


def site_fingerprint(site: Site, model: ModelConfig) -> DataFingerprint:
    """Fingerprint of a site's training split at the model's input size."""
    dataset = site.dataset("train", model)
    items = [dataset[i] for i in range(len(dataset))]
    return fingerprint_images((item["image"] for item in items), (item["mask"] for item in items))


def with_plan(config: RunConfig, fingerprints: Sequence[DataFingerprint]) -> RunConfig:
    """``config`` with ``model.nnunet_plan`` planned from the merged ``fingerprints``."""
    plan = plan_nnunet_2d(merge_fingerprints(fingerprints), config.model.image_size, config.model.num_classes,
                          gpu_memory_gb=config.model.nnunet_gpu_memory_gb)
    return config.model_copy(update={"model": config.model.model_copy(update={"nnunet_plan": plan.to_dict()})})
