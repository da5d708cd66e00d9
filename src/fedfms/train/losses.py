"""Segmentation losses: the paper's BCE with logits per class, and MedSAM's Dice + BCE."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn


def bce_loss(num_classes: int, pos_weight: float) -> nn.BCEWithLogitsLoss:
    """BCE with logits over (B, C, H, W) logits and {0, 1} masks, averaged over all pixels.

    ``pos_weight`` up-weights foreground pixels of every class (the reference code uses 2).
    """
    weight = torch.full((num_classes, 1, 1), float(pos_weight))
    return nn.BCEWithLogitsLoss(pos_weight=weight)


class DiceBCELoss(nn.Module):
    """MedSAM's loss: MONAI's soft Dice on sigmoid probabilities (squared denominators, per
    image and class, then averaged) plus :func:`bce_loss`. Dice does not depend on how much of
    an image is background, which keeps small structures from collapsing to "all background"."""

    def __init__(self, num_classes: int, pos_weight: float) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")
        self.bce = bce_loss(num_classes, pos_weight)

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, masks) + self.bce(logits, masks)


def segmentation_loss(name: str, num_classes: int, pos_weight: float) -> nn.Module:
    """The loss called ``name`` in :class:`fedfms.config.TrainConfig` (``bce`` or ``dice_bce``)."""
    if name == "bce":
        return bce_loss(num_classes, pos_weight)
    if name == "dice_bce":
        return DiceBCELoss(num_classes, pos_weight)
    raise ValueError(f"unknown loss {name!r}; choose bce or dice_bce")


def proximal_term(model: nn.Module, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """FedProx's ``||w - w_global||^2`` over the trainable parameters named in ``reference``."""
    params = dict(model.named_parameters())
    return sum(((params[name] - ref) ** 2).sum() for name, ref in reference.items())
