"""One optimizer step of fedfms' local training: what :func:`fedfms.train.local.train_epoch`
repeats and what ``fedfms bench step`` times.

Forward under the configured precision (:func:`fedfms.train.device.resolve_precision`: bf16
autocast by default where the hardware computes bf16), the configured loss in fp32, optionally
FedProx's proximal term, backward, and the round's Adam (:func:`fedfms.train.optimizer.local_optimizer`:
fused, over the parameters that receive gradients only).
"""

from __future__ import annotations

import torch
from torch import nn

from fedfms.config import TrainConfig
from fedfms.models.memory import set_gradient_checkpointing
from fedfms.train.device import autocast, resolve_precision
from fedfms.train.losses import proximal_term, segmentation_loss
from fedfms.train.optimizer import local_optimizer, trained_parameters


def predict_batch(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """``(B, C, M, M)`` logits of a batch of images (``image``, ``(B, 3, S, S)``) or, in
    ``decoder`` mode, of cached image embeddings (``embedding``, ``(B, 256, h, w)``)."""
    if "embedding" in batch:
        return model.classify(batch["embedding"].to(device, non_blocking=True))
    return model(batch["image"].to(device, non_blocking=True))


class TrainStep:
    """``step(batch) -> loss``: one optimizer step of ``model`` (moved to ``device``, in train
    mode) on a batch of ``image`` ``(B, 3, S, S)`` or ``embedding`` ``(B, 256, h, w)`` and
    ``mask`` ``(B, C, M, M)``; returns the detached mean loss of the batch.

    ``optimizer``: the round's optimizer (``None``: a fresh :func:`local_optimizer`). With
    ``proximal_mu`` > 0 FedProx's ``mu/2 * ||w - w_start||^2`` is added, ``w_start`` being the
    trained parameters when the step is made. A loss that is not finite raises
    :class:`FloatingPointError` naming ``desc`` and the step.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, num_classes: int, device: torch.device,
                 optimizer: torch.optim.Optimizer | None = None, proximal_mu: float = 0.0, desc: str = "train") -> None:
        self.model = model.to(device).train()
        if cfg.gradient_checkpointing:
            set_gradient_checkpointing(model, True)
        self.optimizer = optimizer if optimizer is not None else local_optimizer(model, cfg, device)
        self.device = device
        self.loss_fn = segmentation_loss(cfg.loss, num_classes, cfg.pos_weight).to(device)
        self.dtype = resolve_precision(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.proximal_mu = proximal_mu
        self.reference = (
            {n: p.detach().clone() for n, p in trained_parameters(model).items()} if proximal_mu > 0 else None
        )
        self.desc = desc
        self.steps = 0

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        masks = batch["mask"].to(self.device, non_blocking=True)
        with autocast(self.device, self.dtype):
            logits = predict_batch(self.model, batch, self.device)
        loss = self.loss_fn(logits.float(), masks)
        if self.reference is not None:
            loss = loss + self.proximal_mu / 2 * proximal_term(self.model, self.reference)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.desc}: loss became {loss.item()} at step {self.steps}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.steps += 1
        return loss.detach()
