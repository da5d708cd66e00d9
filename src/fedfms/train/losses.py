"""Segmentation loss of the paper: binary cross-entropy with logits, per class."""

from __future__ import annotations

import torch
from torch import nn


def bce_loss(num_classes: int, pos_weight: float) -> nn.BCEWithLogitsLoss:
    """BCE with logits over (B, C, H, W) logits and {0, 1} masks, averaged over all pixels.

    ``pos_weight`` up-weights foreground pixels of every class (the reference code uses 2).
    """
    weight = torch.full((num_classes, 1, 1), float(pos_weight))
    return nn.BCEWithLogitsLoss(pos_weight=weight)


def proximal_term(model: nn.Module, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """FedProx's ``||w - w_global||^2`` over the trainable parameters named in ``reference``."""
    params = dict(model.named_parameters())
    return sum(((params[name] - ref) ** 2).sum() for name, ref in reference.items())
