"""Losses: FedProx's proximal term and its pull toward the global model; Dice + BCE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fedfms.config import ModelConfig, TrainConfig
from fedfms.data import ClientDataset, make_synthetic_federation
from fedfms.models import build_model, trainable_state
from fedfms.train.local import make_loader, train_epoch
from fedfms.train.losses import DiceBCELoss, bce_loss, proximal_term


def test_proximal_term_is_the_squared_distance_of_the_named_parameters() -> None:
    model = nn.Linear(3, 2)
    reference = {name: p.detach() + 0.5 for name, p in model.named_parameters()}
    assert proximal_term(model, reference).item() == pytest.approx(0.25 * (6 + 2))
    assert proximal_term(model, {"bias": model.bias.detach() - 1.0}).item() == pytest.approx(2.0)


def _moved(tmp_path: Path, mu: float) -> float:
    client = make_synthetic_federation(tmp_path / f"data{mu}", num_clients=1, num_classes=1, image_size=64,
                                       mask_size=16, samples_per_client=(8,), seed=4)[0]
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny", image_size=64, mode="msa"))
    start = {k: v.clone() for k, v in trainable_state(model).items()}
    loader = make_loader(ClientDataset(client, image_size=64, mask_size=16), 4, shuffle=False, seed=0)
    train_epoch(model, loader, TrainConfig(lr=1e-2, precision="fp32"), 1, torch.device("cpu"), proximal_mu=mu)
    return sum(((v - start[k]) ** 2).sum().item() for k, v in trainable_state(model).items())


def test_fedprox_keeps_the_local_model_closer_to_the_global_one(tmp_path: Path) -> None:
    assert _moved(tmp_path, mu=100.0) < 0.5 * _moved(tmp_path, mu=0.0)


def test_dice_bce_is_dice_plus_bce_and_prefers_the_right_mask() -> None:
    masks = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.6).float()
    right, wrong = 8 * (2 * masks - 1), 8 * (1 - 2 * masks)
    loss = DiceBCELoss(1, 2.0)
    probabilities = torch.sigmoid(right)
    dice = 1 - (2 * (probabilities * masks).sum((2, 3)) + 1e-5) / (
        (probabilities**2).sum((2, 3)) + (masks**2).sum((2, 3)) + 1e-5)
    torch.testing.assert_close(loss(right, masks), dice.mean() + bce_loss(1, 2.0)(right, masks))
    assert loss(right, masks) < 0.01 < 1.0 < loss(wrong, masks)
