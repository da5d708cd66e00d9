"""Flower's aggregation strategies, chosen by name, and the part of their state a resume needs.

- ``fedavg``: ``flwr.serverapp.strategy.FedAvg`` — weighted by each client's number of training
  samples (2D slices), exactly (the reference code rounds the weights to 2 decimals; we do not).
- ``fedprox``: ``FedProx`` — FedAvg on the server, ``proximal-mu`` sent to the clients, which
  add ``mu/2 ||w - w_global||^2`` to their loss.
- ``fedadam``: ``FedAdam`` — server-side Adam on the averaged update (``server_lr``); its moments
  ``m_t``/``v_t`` are saved with every checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, Strategy

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


class _Placeholders:
    """A stand-in ``Grid`` for :func:`train_content`: ``count`` placeholder node ids, always
    enough, so that the strategy's node sampling (which sleeps until enough nodes are online,
    with no deadline) returns at once."""

    def __init__(self, count: int) -> None:
        self._count = count

    def get_node_ids(self) -> list[int]:
        return list(range(self._count))


def train_content(strategy: Strategy, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
    """What every training node receives in ``server_round``: the global ``arrays`` and
    ``config`` as the strategy configures them (FedProx adds ``proximal-mu``, FedAdam keeps the
    arrays it will step from). The server addresses the messages itself
    (:func:`fedfms.federated.server._train_round`): which nodes train, and how long the round
    waits for them, is the server's decision, each wait with a deadline."""
    inner = getattr(strategy, "strategy", strategy)  # a DP wrapper configures through the strategy it wraps
    count = max(inner.min_available_nodes, inner.min_train_nodes, 1)
    messages = list(strategy.configure_train(server_round, arrays, config, _Placeholders(count)))
    return messages[0].content
