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

``case``
    One score per case (patient, volume, whole slide: the manifest's ``case_id``), the
    protocol of volumetric studies (BraTS; Buda et al. 2019 for the LGG set): the pixels of all
    slices of a case are pooled (``sigmoid > threshold``), Dice ``2|P∩T| / (|P| + |T|)`` and IoU
    ``|P∩T| / |P∪T|`` are computed per case and class, then averaged over the cases of a
    client. A slice without lesion no longer scores 1 by predicting nothing: it only adds its
    false positives to its case. A case whose ground truth and prediction are both empty for
    a class scores 1 (as in ``standard``), an empty ground truth with any predicted pixel 0.
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


def _foreground(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """``sigmoid(logits) > threshold`` without the sigmoid: (B, C, H, W) bool."""
    return logits > math.log(threshold / (1 - threshold))


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
    Returns (dice, iou), each (B, C) float64. The ``case`` protocol scores cases, not images:
    see :class:`ScoreAccumulator`.
    """
    if logits.shape != masks.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in shape")
    if protocol == "case":
        raise ValueError("the case protocol scores whole cases: use ScoreAccumulator with the batch's case ids")
    target = masks > 0.5
    if protocol == "standard":
        return _standard_scores(_foreground(logits, threshold), target)
    smooth = (PAPER_DICE_SMOOTH, PAPER_IOU_SMOOTH)
    pairs = [_smoothed_scores(logits > t, target, smooth) for t in PAPER_THRESHOLDS]
    dice = torch.stack([d for d, _ in pairs]).mean(0)
    iou = torch.stack([i for _, i in pairs]).mean(0)
    return dice, iou


@dataclass
class ScoreAccumulator:
    """Collects the scores of one client and reduces them: the mean over images, or with the
    ``case`` protocol the mean over cases of the pooled per-case counts.

    ``class_names`` name the C channels; the summary has ``dice`` and ``iou`` (mean over images
    (cases) and classes), per-class lists ``dice_per_class`` / ``iou_per_class``, ``images``
    and, with the ``case`` protocol, ``cases``.
    """

    class_names: Sequence[str]
    protocol: MetricProtocol = "standard"
    threshold: float = 0.5
    _dice: list[torch.Tensor] = field(default_factory=list)
    _iou: list[torch.Tensor] = field(default_factory=list)
    _case_counts: dict[str, torch.Tensor] = field(default_factory=dict)
    _image_cases: list[str] = field(default_factory=list)
    _images: int = 0

    def add(self, logits: torch.Tensor, masks: torch.Tensor, cases: Sequence[str] | None = None) -> None:
        """Score a batch: logits and masks (B, C, H, W); ``cases``: the B case ids (needed by the
        ``case`` protocol and by :meth:`per_case`)."""
        logits, masks = logits.detach().float().cpu(), masks.cpu()
        self._images += logits.shape[0]
        if self.protocol != "case":
            dice, iou = image_scores(logits, masks, self.protocol, self.threshold)
            self._dice.append(dice)
            self._iou.append(iou)
            self._image_cases.extend(cases or [])
            return
        if logits.shape != masks.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in shape")
        if cases is None or len(cases) != logits.shape[0]:
            raise ValueError(f"the case protocol needs one case id per image: {logits.shape[0]} images, "
                             f"{'no' if cases is None else len(cases)} case ids")
        pred, target = _foreground(logits, self.threshold), masks > 0.5
        counts = torch.stack([(pred & target).sum((2, 3)), pred.sum((2, 3)), target.sum((2, 3))], -1).double()
        for case, case_counts in zip(cases, counts):  # case_counts: (C, 3) intersection, |P|, |T|
            self._case_counts[case] = self._case_counts.get(case, torch.zeros_like(case_counts)) + case_counts

    def _scores(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(N, C) Dice and IoU of the N images (cases), or None before anything was added."""
        if self.protocol != "case":
            return (torch.cat(self._dice), torch.cat(self._iou)) if self._dice else None
        if not self._case_counts:
            return None
        inter, pred, target = torch.stack(list(self._case_counts.values())).unbind(-1)
        union = pred + target - inter
        empty = union == 0
        dice = torch.where(empty, 1.0, 2 * inter / (pred + target).clamp_min(1))
        iou = torch.where(empty, 1.0, inter / union.clamp_min(1))
        return dice, iou

    def per_case(self) -> dict[str, float]:
        """The Dice of each case, mean over classes: with the ``case`` protocol the case's pooled
        Dice, otherwise the mean over its images (the case ids given to :meth:`add`). Cases,
        not images, are the independent units of a paired test: a patient's slices, a slide's
        tiles go together. Their mean is the summary's ``dice`` with the ``case`` protocol, or
        where every case has as many images."""
        scores = self._scores()
        if scores is None:
            return {}
        per_unit = scores[0].mean(1)
        if self.protocol == "case":
            return {case: float(dice) for case, dice in zip(self._case_counts, per_unit)}
        if len(self._image_cases) != len(per_unit):
            raise ValueError(f"scores per case need one case id per image: {len(per_unit)} images, "
                             f"{len(self._image_cases)} case ids")
        by_case: dict[str, list[float]] = {}
        for case, dice in zip(self._image_cases, per_unit.tolist()):
            by_case.setdefault(case, []).append(dice)
        return {case: sum(values) / len(values) for case, values in by_case.items()}

    def summary(self) -> dict[str, float | int | list[float]]:
        """Means over images (cases); an empty accumulator gives NaN scores and ``images`` 0."""
        scores = self._scores()
        counts = {"images": self._images, **({"cases": len(self._case_counts)} if self.protocol == "case" else {})}
        if scores is None:
            nan_per_class = [math.nan] * len(self.class_names)
            return {"dice": math.nan, "iou": math.nan, "dice_per_class": nan_per_class,
                    "iou_per_class": nan_per_class, **counts}
        dice, iou = scores
        return {
            "dice": float(dice.mean()),
            "iou": float(iou.mean()),
            "dice_per_class": [float(v) for v in dice.mean(0)],
            "iou_per_class": [float(v) for v in iou.mean(0)],
            **counts,
        }
