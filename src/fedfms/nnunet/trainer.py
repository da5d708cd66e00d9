"""One local round of nnU-Net's own training recipe at a site.

``nnUNetTrainer`` (nnunetv2) does the work: Dice + cross-entropy (Dice + BCE for regions) with
deep supervision, SGD with Nesterov momentum 0.99 and weight decay 3e-5, gradient clipping,
patch sampling with a third of each batch centred on foreground, and its batchgeneratorsv2 data
augmentation (rotation, scaling, noise, blur, brightness, contrast, low resolution, gamma,
mirroring). fedfms only decides the schedule: one local epoch of ``iterations`` batches per
round, and the poly learning rate runs over the whole federated schedule (epoch ``round - 1`` of
``rounds * local_epochs``), as if the federation were one long nnU-Net training.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from fedfms.nnunet.workspace import CONFIGURATION, nnunet_environment


class SiteTrainer(nnUNetTrainer):
    """``nnUNetTrainer`` whose log lines go to its log file only (the site's console shows
    fedfms' per-round lines), trained on every preprocessed case of the site (fold ``all``)."""

    def print_to_log_file(self, *args: Any, also_print_to_console: bool = True, add_timestamp: bool = True) -> None:
        super().print_to_log_file(*args, also_print_to_console=False, add_timestamp=add_timestamp)


@dataclass(frozen=True)
class RoundResult:
    """What one nnU-Net round did: mean loss over its iterations, images seen, batches, time, and
    how it trained: the resolutions its loss was taken at (deep supervision) and the
    augmentation transforms of its data loader."""

    loss: float
    samples: int
    steps: int
    seconds: float
    supervised_outputs: int
    augmentation: tuple[str, ...]


def _supervised_outputs(loss: torch.nn.Module) -> int:
    return len(loss.weight_factors) if isinstance(loss, DeepSupervisionWrapper) else 1


def _transform_names(loader: Any) -> tuple[str, ...]:
    """Class names of the transforms a (single- or multi-process) nnU-Net loader applies."""
    data_loader = getattr(loader, "data_loader", getattr(loader, "generator", None))
    transforms = getattr(data_loader, "transforms", None)
    return tuple(type(getattr(t, "transform", t)).__name__ for t in getattr(transforms, "transforms", ()))


def train_round(network: torch.nn.Module, plans: dict[str, Any], dataset: dict[str, Any], workspace: Path,
                epoch: int, total_epochs: int, iterations: int, device: torch.device,
                augmentation_workers: int = 0) -> RoundResult:
    """Train ``network`` (the global model's nnU-Net network, deep-supervision heads included) in
    place for ``iterations`` batches of nnU-Net's recipe at poly-schedule epoch ``epoch``
    (0-based) of ``total_epochs``, on the cases preprocessed in ``workspace``."""
    start = time.perf_counter()
    with nnunet_environment(workspace, augmentation_workers):
        with contextlib.redirect_stdout(io.StringIO()):
            trainer = SiteTrainer({**copy.deepcopy(plans), "continue_training": False}, CONFIGURATION, "all",
                                  dataset, device)
            trainer.num_epochs = total_epochs
            trainer.num_iterations_per_epoch = iterations
            trainer.initialize()
            trainer.network.load_state_dict(network.state_dict())
            batches, validation = trainer.get_dataloaders()
        try:
            trainer.set_deep_supervision_enabled(True)
            trainer.network.train()
            trainer.lr_scheduler.step(epoch)
            losses = [float(trainer.train_step(next(batches))["loss"]) for _ in range(iterations)]
        finally:
            for loader in (batches, validation):
                if isinstance(loader, NonDetMultiThreadedAugmenter):
                    loader._finish()
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"nnU-Net's loss became non-finite at schedule epoch {epoch}: {losses}")
    network.load_state_dict(trainer.network.state_dict())
    return RoundResult(loss=sum(losses) / len(losses), samples=iterations * trainer.batch_size, steps=iterations,
                       seconds=time.perf_counter() - start, supervised_outputs=_supervised_outputs(trainer.loss),
                       augmentation=_transform_names(batches))
