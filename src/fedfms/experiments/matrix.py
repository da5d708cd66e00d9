"""The paper's experiment matrix: model row x unseen client. Each cell is one leave-one-client-out
run (federated in Flower's simulation runtime, or centralized) writing to
``output_dir/<row>/<unseen>/``. Finished cells are skipped and interrupted ones resumed, so an
interrupted matrix continues where it stopped.

Beside the paper's rows, ``Local`` asks what a hospital asks first: does federating beat training
on my own data alone? It stands for one row ``Local-<site>`` per training site of each fold: the
model of the centralized row ``local_model`` trained by the centralized trainer on that site's
training split alone (``data.clients`` = the site and the unseen client), with the same rounds
and local epochs, so that the site runs exactly the optimisation steps it runs in the
federation, only without averaging. It is scored on the unseen client and on its own
validation split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedfms.config import LITEMEDSAM_IMAGE_SIZE, ConfigError, ExperimentConfig, ModelConfig, RunConfig
from fedfms.run.state import LATEST
from fedfms.run.tracker import RESULTS

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


LOCAL = "Local"


def local_site(label: str) -> str | None:
    """The training site of a ``Local-<site>`` row (``None`` for the other rows)."""
    prefix = f"{LOCAL}-"
    return label[len(prefix):] if label.startswith(prefix) else None


def _local_cell(experiment: ExperimentConfig, label: str, site: str, unseen: str) -> RunConfig:
    row = ROWS.get(experiment.local_model)
    if row is None or row.federated:
        raise ConfigError(f"{experiment.name}: local_model {experiment.local_model!r} must be a centralized row "
                          f"(e.g. Decoder, MSA, U-Net) whose model the Local rows train")
    names = clients(experiment)
    if site not in names or site == unseen:
        raise ConfigError(f"{experiment.name}: row {label} needs a training site of fold {unseen!r}; "
                          f"the clients are {', '.join(names)}")
    config = cell_config(experiment, experiment.local_model, unseen)
    return config.model_copy(update={
        "name": label, "output_dir": experiment.output_dir / label / unseen,
        "data": config.data.model_copy(update={"clients": [site, unseen]}),
    })


def cell_config(experiment: ExperimentConfig, label: str, unseen: str) -> RunConfig:
    """The run configuration of one cell (row ``label``, fold ``unseen``)."""
    site = local_site(label)
    if site is not None:
        return _local_cell(experiment, label, site, unseen)
    if label not in ROWS:
        raise ConfigError(f"{experiment.name}: unknown model row {label!r}; known: {', '.join(ROWS)}, {LOCAL}-<site>")
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


def clients(experiment: ExperimentConfig) -> list[str]:
    """Every client of the data (``base.data.clients``, default: every prepared folder)."""
    from fedfms.train.sites import ordered_clients

    base = RunConfig.model_validate({**experiment.base, "name": experiment.name})
    return base.data.clients or [p.name for p in ordered_clients(base.data)]


def folds(experiment: ExperimentConfig) -> list[str]:
    """The unseen clients of the matrix (default: every client of the data)."""
    return experiment.unseen if experiment.unseen is not None else clients(experiment)


def fold_rows(experiment: ExperimentConfig, unseen: str) -> list[str]:
    """The row labels of one fold: ``models`` with ``Local`` expanded to ``Local-<site>`` for
    every training site."""
    return [expanded for label in experiment.models
            for expanded in ([f"{LOCAL}-{c}" for c in clients(experiment) if c != unseen] if label == LOCAL else [label])]


def run_matrix(experiment: ExperimentConfig) -> list[Path]:
    """Run every cell not finished yet; returns the cells' run folders."""
    from fedfms.federated.simulation import simulate  # heavy imports: not for the report, which needs local_site
    from fedfms.train.centralized import train_centralized

    cells = [(label, unseen) for unseen in folds(experiment) for label in fold_rows(experiment, unseen)]
    configs = [cell_config(experiment, label, unseen) for label, unseen in cells]  # all errors before any run
    for index, ((label, unseen), config) in enumerate(zip(cells, configs), start=1):
        if (config.output_dir / RESULTS).exists():
            logger.info("cell %d/%d %s, unseen %s: finished, skipped", index, len(cells), label, unseen)
            continue
        resume = (config.output_dir / "checkpoints" / LATEST).exists()
        logger.info("cell %d/%d %s, unseen %s: %s", index, len(cells), label, unseen, "resuming" if resume else "starting")
        runner = train_centralized if local_site(label) is not None or not ROWS[label].federated else simulate
        runner(config, resume=resume)
    return [config.output_dir for config in configs]
