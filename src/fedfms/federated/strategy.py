"""Flower's aggregation strategies, chosen by name, and the part of their state a resume needs.

- ``fedavg``: ``flwr.serverapp.strategy.FedAvg`` — weighted by each client's number of training
  samples (2D slices), exactly (the reference code rounds the weights to 2 decimals; we do not).
- ``fedprox``: ``FedProx`` — FedAvg on the server, ``proximal-mu`` sent to the clients, which
  add ``mu/2 ||w - w_global||^2`` to their loss.
- ``fedadam``: ``FedAdam`` — server-side Adam on the averaged update (``server_lr``); its moments
  ``m_t``/``v_t`` are saved with every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg

from fedfms.config import FederationConfig
from fedfms.federated import protocol as P

MOMENTS = ("m_t", "v_t")


def make_strategy(cfg: FederationConfig, min_train_nodes: int, weighted_by_key: str = P.NUM_EXAMPLES) -> FedAvg:
    """The strategy of ``cfg.strategy``; all connected training nodes take part in every round,
    at least ``min_train_nodes`` of them. ``weighted_by_key``: the reply metric that weights a
    site in the average (its training samples; client-level DP weights sites equally)."""
    common = dict(fraction_train=1.0, min_train_nodes=min_train_nodes, min_available_nodes=min_train_nodes,
                  weighted_by_key=weighted_by_key)
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, **common)
    if cfg.strategy == "fedmedian":
        return FedMedian(**common)
    if cfg.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(beta=cfg.trimmed_beta, **common)
    return FedAvg(**common)


def strategy_tensors(strategy: FedAvg) -> dict[str, torch.Tensor]:
    """Server-side optimizer state as ``<moment>/<param>`` tensors (empty for FedAvg/FedProx)."""
    out: dict[str, torch.Tensor] = {}
    for moment in MOMENTS:
        for name, value in (getattr(strategy, moment, None) or {}).items():
            out[f"{moment}/{name}"] = torch.from_numpy(np.array(value, copy=True))
    return out


def restore_strategy_tensors(strategy: FedAvg, tensors: dict[str, torch.Tensor]) -> None:
    """Put back what :func:`strategy_tensors` saved."""
    for moment in MOMENTS:
        values = {k.split("/", 1)[1]: v.numpy() for k, v in tensors.items() if k.startswith(f"{moment}/")}
        if values:
            setattr(strategy, moment, values)


class NodeSubset:
    """The part of a Flower ``Grid`` a strategy samples from: only the nodes that train.

    The unseen (test) client's node is connected to the same SuperLink but must never receive a
    train message; strategies sample through ``grid.get_node_ids()``, so they get this view.
    """

    def __init__(self, grid, node_ids: Iterable[int]) -> None:
        self._grid = grid
        self._allowed = set(node_ids)

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n in self._allowed]
