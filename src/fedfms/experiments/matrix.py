"""The paper's experiment matrix: model row x unseen client. Each cell is one leave-one-client-out
run (federated in Flower's simulation runtime, or centralized) writing to
``output_dir/<row>/<unseen>/``. Finished cells are skipped and interrupted ones resumed, so an
interrupted matrix continues where it stopped."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfms.config import LITEMEDSAM_IMAGE_SIZE, ConfigError, ExperimentConfig, ModelConfig, RunConfig
from fedfms.federated.simulation import simulate
from fedfms.run.state import LATEST
from fedfms.run.tracker import RESULTS
from fedfms.train.centralized import train_centralized
from fedfms.train.sites import ordered_clients

logger = logging.getLogger("fedfms")


@dataclass(frozen=True)
class Row:
    """A model of Table 1: federated or not, architecture, SAM size (``base``: ViT-B, ``large``:
    ViT-L by default, or whichever backbone the experiment names) and mode, pretrained or not;
    for nnU-Net the training recipe (nnU-Net's own, or the paper's like-for-like BCE + Adam on
    whole images: the ``-paper`` rows)."""

    federated: bool
    arch: str = "sam"
    size: str = "base"
    mode: str = "msa"
    pretrained: bool = True
    recipe: str = "nnunet"


def _sam_rows() -> dict[str, Row]:
    rows = {}
    for name, size, mode in (("SAM", "base", "sam"), ("MSA", "base", "msa"), ("MSA-L", "large", "msa"),
                             ("LoRA", "base", "lora"), ("Decoder", "base", "decoder")):
        for federated in (True, False):
            label = f"Fed{name}" if federated else name
            rows[label] = Row(federated, "sam", size, mode)
            rows[f"{label}-PT"] = Row(federated, "sam", size, mode, pretrained=False)
    return rows


ROWS: dict[str, Row] = {
    **_sam_rows(),
    "FedU-Net": Row(True, "unet", pretrained=False), "U-Net": Row(False, "unet", pretrained=False),
    "FednnU-Net": Row(True, "nnunet", pretrained=False), "nnU-Net": Row(False, "nnunet", pretrained=False),
    "FednnU-Net-paper": Row(True, "nnunet", pretrained=False, recipe="paper"),
    "nnU-Net-paper": Row(False, "nnunet", pretrained=False, recipe="paper"),
}


def cell_config(experiment: ExperimentConfig, label: str, unseen: str) -> RunConfig:
    """The run configuration of one cell (row ``label``, fold ``unseen``)."""
    if label not in ROWS:
        raise ConfigError(f"{experiment.name}: unknown model row {label!r}; known: {', '.join(ROWS)}")
    row = ROWS[label]
    base = RunConfig.model_validate({**experiment.base, "name": label})
    model: dict[str, Any] = {"arch": row.arch}
    if row.arch == "sam":
        backbone = experiment.backbones[row.size]
        checkpoint = experiment.weights.get(backbone) if row.pretrained else None
        if row.pretrained and checkpoint is None and backbone != "litemedsam":
            raise ConfigError(f"{experiment.name}: row {label} needs pretrained {backbone} weights; "
                             f"add weights.{backbone} (e.g. sam_{backbone}_*.pth) to the experiment, "
                             f"or use its random-initialisation row {label}-PT")
        image_size = LITEMEDSAM_IMAGE_SIZE if backbone == "litemedsam" else base.model.image_size
        model.update(backbone=backbone, mode=row.mode, checkpoint=checkpoint, pretrained=row.pretrained,
                     image_size=image_size)
    else:
        model.update(checkpoint=None, image_size=experiment.baseline_image_size or base.model.image_size)
        if row.arch == "nnunet":
            model.update(nnunet={**base.model.nnunet.model_dump(), "recipe": row.recipe})
    return base.model_copy(update={
        "output_dir": experiment.output_dir / label / unseen,
        "model": ModelConfig.model_validate({**base.model.model_dump(), **model}),
        "data": base.data.model_copy(update={"unseen": unseen}),
    })


def folds(experiment: ExperimentConfig) -> list[str]:
    """The unseen clients of the matrix (default: every client of the data)."""
    if experiment.unseen is not None:
        return experiment.unseen
    base = RunConfig.model_validate({**experiment.base, "name": experiment.name})
    return base.data.clients or [p.name for p in ordered_clients(base.data)]


def run_matrix(experiment: ExperimentConfig) -> list[Path]:
    """Run every cell not finished yet; returns the cells' run folders."""
    cells = [(label, unseen) for unseen in folds(experiment) for label in experiment.models]
    configs = [cell_config(experiment, label, unseen) for label, unseen in cells]  # all errors before any run
    for config in configs:
        ordered_clients(config.data)  # every unseen client has a folder, before any run folder exists
    for index, ((label, unseen), config) in enumerate(zip(cells, configs), start=1):
        if (config.output_dir / RESULTS).exists():
            logger.info("cell %d/%d %s, unseen %s: finished, skipped", index, len(cells), label, unseen)
            continue
        resume = (config.output_dir / "checkpoints" / LATEST).exists()
        logger.info("cell %d/%d %s, unseen %s: %s", index, len(cells), label, unseen, "resuming" if resume else "starting")
        runner = simulate if ROWS[label].federated else train_centralized
        runner(config, resume=resume)
    return [config.output_dir for config in configs]
