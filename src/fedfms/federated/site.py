"""What a hospital's node holds: which data folder, which weights file, its model.
Runs only where the data is (inside the ClientApp).

Which folder: a SuperNode of a real deployment is started with ``--node-config
"data-dir='/path/to/prepared/site'"``; in the simulation runtime node ``partition-id`` *i*
takes the *i*-th client of the run's data configuration. A node may also name its own copy of
the pretrained weights with ``sam-checkpoint='/path/sam_vit_b_01ec64.pth'``, and decide what
is its own business (:data:`NODE_SETTINGS`; the run's values are only the defaults): where it
trains (``device='cuda:1'``), in which precision (``precision='bf16'``), with how many data
loader workers (``num-workers=4``), where it caches image embeddings (``decoder`` mode,
``embedding-cache='/path/cache'``) and keeps its optimizer state (``optimizer_state: keep``,
``state-dir='/path/state'``). Whether the node answers in its warm site worker
(``site-worker``, ``site-worker-idle-s``) is :mod:`fedfms.federated.worker`'s.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

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


NODE_SETTINGS = {
    "device": "train.device",
    "precision": "train.precision",
    "num-workers": "train.num_workers",
    "embedding-cache": "train.embedding_cache",
    "state-dir": "train.state_dir",
}
"""Node config key -> the run setting it replaces on that node: node-local matters (hardware,
local folders) that change neither the model nor what travels."""


def node_run_config(context: Context, config: RunConfig) -> RunConfig:
    """The run's configuration with this node's own settings (:data:`NODE_SETTINGS`) applied;
    a wrong value is a configuration error naming the setting."""
    overrides = {key: context.node_config[name] for name, key in NODE_SETTINGS.items()
                 if name in context.node_config}
    return config.with_overrides(overrides) if overrides else config


def node_model_config(context: Context, model: ModelConfig) -> ModelConfig:
    """The run's model settings with this node's own path to the pretrained weights, if given."""
    if "sam-checkpoint" in context.node_config:
        return model.model_copy(update={"checkpoint": Path(str(context.node_config["sam-checkpoint"]))})
    return model


@lru_cache(maxsize=2)
def _template(model_json: str, seed: int) -> nn.Module:
    """The model as built, kept per process and never handed out (see :func:`site_model`)."""
    return build_model(ModelConfig.model_validate_json(model_json), seed=seed)


def site_model(model: ModelConfig, seed: int) -> nn.Module:
    """A fresh model for one message: a copy of the node's model as built from ``model`` with
    ``seed`` (so that randomly initialised frozen weights of ``-PT`` runs agree across nodes).

    The built model is kept per process (reading pretrained weights is the slow part) but only
    copies of it are used, so nothing a message does to its model (trained tensors, running
    statistics, device, gradient checkpointing) reaches the next message: every message starts
    from the same model and loads the tensors the server sent.
    """
    return copy.deepcopy(_template(model.model_dump_json(), seed))


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
