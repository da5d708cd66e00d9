"""One local round at a site (or on the pooled sites of a centralized run): the model's recipe
for ``train.local_epochs`` epochs, shared by the federated ClientApp and centralized training.

Two recipes: fedfms' own (:func:`fedfms.train.local.train_epoch`: whole images or cached
embeddings, the configured loss, Adam, optionally FedProx) for every model, and nnU-Net's
(:mod:`fedfms.nnunet.trainer`) for ``arch: nnunet`` with ``nnunet.recipe: nnunet``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from torch import nn
from torch.utils.data import ConcatDataset

from fedfms.config import ModelConfig, RunConfig
from fedfms.nnunet.preprocess import preprocess_cases
from fedfms.nnunet.trainer import RoundResult, train_round
from fedfms.privacy.dpsgd import dp_local_round
from fedfms.train.device import resolve_device
from fedfms.train.local import EpochResult, make_loader, train_epoch
from fedfms.train.optimizer import default_state_root, kept_state, local_optimizer
from fedfms.train.planning import site_cases
from fedfms.train.sites import Site, site_inputs


def uses_nnunet_recipe(model: ModelConfig) -> bool:
    return model.arch == "nnunet" and model.nnunet.recipe == "nnunet"


def nnunet_workspace(config: RunConfig, client: str) -> Path:
    """nnU-Net's folders for ``client`` in this run, on the site's own disk (``train.state_dir``)."""
    key = hashlib.sha256(f"{config.name}\0{config.output_dir}\0{client}".encode()).hexdigest()[:32]
    return Path(config.train.state_dir or default_state_root()) / "nnunet" / key


def _cases_key(sites: Sequence[Site]) -> str:
    """Digest of what the preprocessed cases were made from: manifests and training splits."""
    described = [(s.name, s.manifest.model_dump(mode="json"), s.train) for s in sites]
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _nnunet_round(model: nn.Module, sites: Sequence[Site], config: RunConfig, model_cfg: ModelConfig,
                  round_: int, client: str) -> list[RoundResult]:
    plan = model_cfg.nnunet.plan
    if plan is None:
        raise ValueError("nnU-Net's recipe needs the run's plan (model.nnunet.plan); it is made when the run starts")
    workspace = nnunet_workspace(config, client)
    cases = ((f"{s.name}--{case_id}", data, seg) for s in sites  # ids are unique per site only
             for case_id, data, seg in site_cases(s, "train", model_cfg))
    preprocess_cases(cases, plan["plans"], plan["dataset"], workspace, _cases_key(sites))
    epochs = config.train.local_epochs
    return [train_round(model.network, plan["plans"], plan["dataset"], workspace, (round_ - 1) * epochs + e,
                        config.federation.rounds * epochs, model_cfg.nnunet.iterations_per_round,
                        resolve_device(config.train.device, "train.device"), model_cfg.nnunet.augmentation_workers)
            for e in range(epochs)]


def local_round(model: nn.Module, sites: Sequence[Site], config: RunConfig, model_cfg: ModelConfig, round_: int,
                client: str, proximal_mu: float = 0.0) -> list[EpochResult | RoundResult]:
    """Train ``model`` in place on the training splits of ``sites`` for one round; one result per
    local epoch. ``client`` names the trainer (a site, or ``pooled``) in progress lines and keys
    its kept optimizer state, nnU-Net folders and privacy accountant. With ``privacy.level:
    record`` the round is case-level DP-SGD (:mod:`fedfms.privacy.dpsgd`)."""
    if uses_nnunet_recipe(model_cfg):
        return _nnunet_round(model, sites, config, model_cfg, round_, client)
    if config.privacy.level == "record":
        return dp_local_round(model, sites, config, model_cfg, round_, client)
    device = resolve_device(config.train.device, "train.device")
    inputs = ConcatDataset([site_inputs(s, "train", model, config, model_cfg) for s in sites])
    loader = make_loader(inputs, config.train.batch_size, shuffle=True, seed=config.train.seed + round_,
                         num_workers=config.train.num_workers)
    optimizer = local_optimizer(model, config.train, device)
    kept = kept_state(config, client)
    if kept is not None:
        kept.restore(optimizer, round_)
    results = [train_epoch(model, loader, config.train, model_cfg.num_classes, device, proximal_mu=proximal_mu,
                           desc=f"{client} round {round_} epoch {epoch + 1}", optimizer=optimizer)
               for epoch in range(config.train.local_epochs)]
    if kept is not None:
        kept.save(optimizer, round_)
    return results
