"""What a hospital's node holds: which data folder, which weights file, its model.
Runs only where the data is (inside the ClientApp).

Which folder: a SuperNode of a real deployment is started with ``--node-config
"data-dir='/path/to/prepared/site'"``; in the simulation runtime node ``partition-id`` *i*
takes the *i*-th client of the run's data configuration. A node may also name its own copy of
the pretrained weights with ``sam-checkpoint='/path/sam_vit_b_01ec64.pth'`` and the folder where
it caches image embeddings (``decoder`` mode) with ``embedding-cache='/path/cache'`` and keeps
its optimizer state (``optimizer_state: keep``) with ``state-dir='/path/state'``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import Context
from torch import nn

from fedfms.config import DataConfig, ModelConfig, RunConfig
from fedfms.models import build_model
from fedfms.models.state import state_digest
from fedfms.train.sites import Site, SiteError, ordered_clients


def site_directory(context: Context, data: DataConfig) -> Path:
    """The data folder of this node: node config ``data-dir``, else the simulation partition."""
    if "data-dir" in context.node_config:
        return Path(str(context.node_config["data-dir"]))
    if "partition-id" not in context.node_config:
        raise SiteError(f"node {context.node_id}: no 'data-dir' in its node config; start the SuperNode "
                        "with --node-config \"data-dir='/path/to/prepared/site'\"")
    clients = ordered_clients(data)
    index = int(context.node_config["partition-id"])
    if index >= len(clients):
        raise SiteError(f"node {context.node_id}: partition {index} but only {len(clients)} clients in {data.root}")
    return clients[index]


NODE_SETTINGS = {"embedding-cache": "train.embedding_cache", "state-dir": "train.state_dir"}


def node_run_config(context: Context, config: RunConfig) -> RunConfig:
    """The run's configuration with this node's own folders applied (node config
    ``embedding-cache``, ``state-dir``)."""
    overrides = {key: str(context.node_config[name]) for name, key in NODE_SETTINGS.items()
                 if name in context.node_config}
    return config.with_overrides(overrides) if overrides else config


def node_model_config(context: Context, model: ModelConfig) -> ModelConfig:
    """The run's model settings with this node's own path to the pretrained weights, if given."""
    if "sam-checkpoint" in context.node_config:
        return model.model_copy(update={"checkpoint": Path(str(context.node_config["sam-checkpoint"]))})
    return model


@lru_cache(maxsize=2)
def _cached_model(model_json: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig.model_validate_json(model_json))


def site_model(model: ModelConfig, seed: int) -> nn.Module:
    """The node's model, built once per process (the pretrained load is the slow part) and
    seeded, so that randomly initialised frozen weights (``-PT`` runs) agree across nodes."""
    return _cached_model(model.model_dump_json(), seed)


def frozen_digest(model: nn.Module) -> str:
    """SHA-256 of every tensor that does not train: all nodes must hold the same frozen weights,
    since only the trainable ones travel."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return state_digest({k: v for k, v in model.state_dict().items() if k not in trainable})


def describe(site: Site) -> dict[str, str | int]:
    """The facts a node tells the server about itself (no image or mask data)."""
    return {
        "client": site.name,
        "num-samples": len(site.manifest.samples),
        "num-train": len(site.train),
        "num-val": len(site.val),
        "class-names": json.dumps(site.manifest.class_names),
    }
