"""One local epoch of training and one pass of evaluation, shared by the federated client and
the centralized trainer (same code, same budget)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fedfms.config import EvaluationConfig, TrainConfig
from fedfms.train.device import autocast, resolve_precision
from fedfms.train.metrics import ScoreAccumulator
from fedfms.train.step import TrainStep, predict_batch


@dataclass(frozen=True)
class EpochResult:
    """What one local epoch did: mean loss, samples seen, optimizer steps and wall time."""

    loss: float
    samples: int
    steps: int
    seconds: float


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader with a seeded shuffle, so a run is reproducible round by round."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, drop_last=False)


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    num_classes: int,
    device: torch.device,
    proximal_mu: float = 0.0,
    desc: str = "train",
    optimizer: torch.optim.Optimizer | None = None,
) -> EpochResult:
    """Train ``model`` in place for one pass over ``loader`` (or ``cfg.max_steps_per_epoch``),
    one :class:`~fedfms.train.step.TrainStep` per batch.

    ``optimizer``: the round's optimizer (see :mod:`fedfms.train.optimizer`; the caller keeps it
    across the epochs of a round and, with ``optimizer_state: keep``, across rounds); ``None``
    makes a fresh one. With ``proximal_mu`` > 0 FedProx's term ``mu/2 * ||w - w_start||^2`` is
    added. Batches: ``image`` (B, 3, S, S) or ``embedding`` (B, 256, h, w), and ``mask`` (B, C, M, M).
    """
    if len(loader.dataset) == 0:
        raise ValueError(f"{desc}: no training samples")
    step = TrainStep(model, cfg, num_classes, device, optimizer, proximal_mu, desc)
    total_steps = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    loss_sum, samples, steps = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=desc, unit="batch", leave=False, mininterval=2.0, disable=None)
    for batch in loader:
        loss = step(batch)
        loss_sum += loss.item() * batch["mask"].shape[0]
        samples += batch["mask"].shape[0]
        steps += 1
        bar.set_postfix(loss=f"{loss_sum / samples:.4f}", img_s=f"{samples / (time.perf_counter() - start):.1f}")
        bar.update()
        if steps >= total_steps:
            break
    bar.close()
    return EpochResult(loss=loss_sum / samples, samples=samples, steps=steps, seconds=time.perf_counter() - start)


@torch.no_grad()
def score(
    model: nn.Module,
    loader: DataLoader,
    class_names: Sequence[str],
    cfg: EvaluationConfig,
    device: torch.device,
    precision: str = "auto",
) -> ScoreAccumulator:
    """The scores of ``model`` on every batch of ``loader``, not yet reduced (see
    :mod:`fedfms.train.metrics` for the reductions)."""
    model.to(device).eval()
    dtype = resolve_precision(precision, device)
    scores = ScoreAccumulator(class_names, cfg.protocol, cfg.threshold)
    for batch in loader:
        with autocast(device, dtype):
            logits = predict_batch(model, batch, device)
        scores.add(logits.float(), batch["mask"], batch.get("case"))
    model.train()
    return scores

