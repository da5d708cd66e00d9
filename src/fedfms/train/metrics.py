"""Dice and IoU per image and per class, with explicit reductions.

Two protocols:

``standard`` (default)
    A pixel is foreground where ``sigmoid(logit) > threshold`` (0.5). Dice and IoU are MONAI's
    (``compute_dice`` / ``compute_iou``), per image and per class, then averaged over the images of a client (mean of per-image scores,
    not a pooled score). An image whose ground truth and prediction are both empty for a class
    scores 1 for that class (a correct "nothing here"); an empty ground truth with any predicted
    pixel scores 0.

``paper``
    The FedFMS reference evaluation, for numbers that sit beside the paper's Table 1: the raw
    logits are binarised at each of the thresholds 0.1, 0.3, 0.5, 0.7, 0.9, Dice and IoU are
    computed per image with the reference's smoothing in numerator and denominator (1e-4 for
    Dice, 1e-6 for IoU; so empty/empty scores 1), averaged over the thresholds, then over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from monai.metrics import compute_dice, compute_iou

from fedfms.config import MetricProtocol

PAPER_THRESHOLDS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
PAPER_DICE_SMOOTH = 1e-4
PAPER_IOU_SMOOTH = 1e-6


def _smoothed_scores(pred: torch.Tensor, target: torch.Tensor, smooth: tuple[float, float]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's smoothed per image, per class Dice and IoU of binary maps.

    pred, target: (B, C, H, W) bool. Returns two (B, C) float64 tensors.
    """
    dims = (2, 3)
    inter = (pred & target).sum(dims).double()
    pred_sum = pred.sum(dims).double()
    target_sum = target.sum(dims).double()
    dice_smooth, iou_smooth = smooth
    return ((2 * inter + dice_smooth) / (pred_sum + target_sum + dice_smooth),
            (inter + iou_smooth) / (pred_sum + target_sum - inter + iou_smooth))


def _standard_scores(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI's per image, per class Dice and IoU of binary maps (``ignore_empty=False``: an empty
    ground truth scores 1 if nothing is predicted, else 0). pred, target: (B, C, H, W) bool;
    returns two (B, C) float64 tensors."""
    pred, target = pred.double(), target.double()
    return (compute_dice(pred, target, include_background=True, ignore_empty=False),
            compute_iou(pred, target, include_background=True, ignore_empty=False))


def image_scores(
    logits: torch.Tensor, masks: torch.Tensor, protocol: MetricProtocol = "standard", threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU of every image and class of a batch.

    logits: (B, C, H, W) raw model outputs; masks: (B, C, H, W) in {0, 1}.
    Returns (dice, iou), each (B, C) float64.
    """
    if logits.shape != masks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in shape")
    target = masks > 0.5
    if protocol == "standard":
        logit_threshold = math.log(threshold / (1 - threshold))
        return _standard_scores(logits > logit_threshold, target)
    smooth = (PAPER_DICE_SMOOTH, PAPER_IOU_SMOOTH)
    pairs = [_smoothed_scores(logits > t, target, smooth) for t in PAPER_THRESHOLDS]
    dice = torch.stack([d for d, _ in pairs]).mean(0)
    iou = torch.stack([i for _, i in pairs]).mean(0)
    return dice, iou


@dataclass
class ScoreAccumulator:
    """Collects per-image scores of one client and reduces them (mean over images).

    ``class_names`` name the C channels; the summary has ``dice`` and ``iou`` (mean over images
    and classes), per-class lists ``dice_per_class`` / ``iou_per_class`` and ``images``.
    """

    class_names: Sequence[str]
    protocol: MetricProtocol = "standard"
    threshold: float = 0.5
    _dice: list[torch.Tensor] = field(default_factory=list)
    _iou: list[torch.Tensor] = field(default_factory=list)

    def add(self, logits: torch.Tensor, masks: torch.Tensor) -> None:
        """Score a batch: logits and masks (B, C, H, W)."""
        dice, iou = image_scores(logits.detach().float().cpu(), masks.cpu(), self.protocol, self.threshold)
        self._dice.append(dice)
        self._iou.append(iou)

    def summary(self) -> dict[str, float | int | list[float]]:
        """Means over images; an empty accumulator gives NaN scores and ``images`` 0."""
        if not self._dice:
            nan_per_class = [math.nan] * len(self.class_names)
            return {"dice": math.nan, "iou": math.nan, "dice_per_class": nan_per_class,
                    "iou_per_class": nan_per_class, "images": 0}
        dice = torch.cat(self._dice)
        iou = torch.cat(self._iou)
        return {
            "dice": float(dice.mean()),
            "iou": float(iou.mean()),
            "dice_per_class": [float(v) for v in dice.mean(0)],
            "iou_per_class": [float(v) for v in iou.mean(0)],
            "images": int(dice.shape[0]),
        }
