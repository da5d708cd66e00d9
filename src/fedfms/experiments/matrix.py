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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedfms.config import LITEMEDSAM_IMAGE_SIZE, ConfigError, ExperimentConfig, ModelConfig, RunConfig
from fedfms.errors import FedfmsError
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


def seeds(experiment: ExperimentConfig) -> list[int]:
    """The seeds each cell runs with: ``seeds``, or the one ``train.seed`` of ``base``."""
    return experiment.seeds or [RunConfig.model_validate({**experiment.base, "name": experiment.name}).train.seed]


def cell_dir(experiment: ExperimentConfig, label: str, unseen: str, seed: int | None = None) -> Path:
    """``output_dir/<row>/<unseen>`` for the first seed, ``output_dir/seed-<N>/<row>/<unseen>``
    for each other seed of :func:`seeds`."""
    first = seeds(experiment)[0]
    root = experiment.output_dir if seed is None or seed == first else experiment.output_dir / f"seed-{seed}"
    return root / label / unseen


def _local_cell(experiment: ExperimentConfig, label: str, site: str, unseen: str, seed: int | None) -> RunConfig:
    row = ROWS.get(experiment.local_model)
    if row is None or row.federated:
        raise ConfigError(f"{experiment.name}: local_model {experiment.local_model!r} must be a centralized row "
                          f"(e.g. Decoder, MSA, U-Net) whose model the Local rows train")
    names = clients(experiment)
    if site not in names or site == unseen:
        raise ConfigError(f"{experiment.name}: row {label} needs a training site of fold {unseen!r}; "
                          f"the clients are {', '.join(names)}")
    config = cell_config(experiment, experiment.local_model, unseen, seed)
    return config.model_copy(update={
        "name": label, "output_dir": cell_dir(experiment, label, unseen, seed),
        "data": config.data.model_copy(update={"clients": [site, unseen]}),
    })


def cell_config(experiment: ExperimentConfig, label: str, unseen: str, seed: int | None = None) -> RunConfig:
    """The run configuration of one cell (row ``label``, fold ``unseen``), with ``seed`` (default:
    the first of :func:`seeds`)."""
    seed = seeds(experiment)[0] if seed is None else seed
    site = local_site(label)
    if site is not None:
        return _local_cell(experiment, label, site, unseen, seed)
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
        "output_dir": cell_dir(experiment, label, unseen, seed),
        "model": ModelConfig.model_validate({**base.model.model_dump(), **model}),
        "data": base.data.model_copy(update={"unseen": unseen}),
        "train": base.train.model_copy(update={"seed": seed}),
    })


def clients(experiment: ExperimentConfig) -> list[str]:
    """Every client of the data (``base.data.clients``, default: every prepared folder)."""
    from fedfms.train.sites import ordered_clients

    base = RunConfig.model_validate({**experiment.base, "name": experiment.name})
    return base.data.clients or [p.name for p in ordered_clients(base.data)]


class StaleCellError(FedfmsError, ValueError):
    """A cell's folder holds a run made with another configuration than the one asked for."""


def _differences(stored: Any, asked: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configuration trees, as ``key old -> new``."""
    if isinstance(stored, dict) and isinstance(asked, dict):
        return [change for key in sorted(set(stored) | set(asked))
                for change in _differences(stored.get(key), asked.get(key), f"{prefix}{key}.")]
    return [] if stored == asked else [f"{prefix.rstrip('.')} {stored!r} -> {asked!r}"]


_FOLDERS = ("embedding_cache", "state_dir")  # where a site keeps caches and optimizer state on disk


def _normalised(tree: dict[str, Any], asked: RunConfig) -> dict[str, Any]:
    """A run's configuration without what the run itself fills in (nnU-Net's plan, and the
    client list a simulation writes down when ``data.clients`` was left unset), without the
    settings of the baselines its architecture is not (``model.unet`` and ``model.nnunet`` of a
    SAM row) and without the folders of :data:`_FOLDERS`: changing those in ``base`` asks a
    finished row nothing new."""
    arch = asked.model.arch
    tree = {**tree, "model": {**tree["model"], "unet": tree["model"]["unet"] if arch == "unet" else None,
                              "nnunet": {**tree["model"]["nnunet"], "plan": None} if arch == "nnunet" else None},
            "train": {**tree["train"], **dict.fromkeys(_FOLDERS)}, "data": dict(tree["data"])}
    if asked.data.clients is None:
        tree["data"]["clients"] = None
    return tree


def cell_changes(config: RunConfig) -> list[str]:
    """How ``config`` differs from the configuration its folder's run was made with (empty if
    the folder holds no run, or one of this configuration)."""
    stored = config.output_dir / "config.yaml"
    if not stored.exists():
        return []
    asked = _normalised(config.model_dump(mode="json"), config)
    return _differences(_normalised(yaml.safe_load(stored.read_text()), config), asked)


def _decide(config: RunConfig, label: str, unseen: str, resume: bool, rerun: bool) -> str:
    """What to do with one cell: ``skip``, ``start``, ``resume`` or ``rerun``; a finished cell
    asked with other settings is refused unless ``resume`` (only more rounds) or ``rerun``."""
    finished = (config.output_dir / RESULTS).exists()
    started = (config.output_dir / "checkpoints" / LATEST).exists()
    if not started and not finished:
        return "start"
    changes = cell_changes(config)
    if not changes:
        return "skip" if finished else "resume"
    if rerun:
        return "rerun"
    stored_rounds = yaml.safe_load((config.output_dir / "config.yaml").read_text())["federation"]["rounds"]
    more_rounds = len(changes) == 1 and changes[0].startswith("federation.rounds ") \
        and config.federation.rounds > stored_rounds
    if more_rounds and (resume or not finished):
        return "resume"
    extend = "--resume to extend it to more rounds, " if more_rounds else ""
    raise StaleCellError(f"{config.output_dir} ({label}, unseen {unseen}) holds a run made with other settings: "
                         f"{'; '.join(changes)}. Use {extend}another output folder, or --rerun to run it again "
                         "from scratch (its folder is replaced)")


def folds(experiment: ExperimentConfig) -> list[str]:
    """The unseen clients of the matrix (default: every client of the data)."""
    return experiment.unseen if experiment.unseen is not None else clients(experiment)


def fold_rows(experiment: ExperimentConfig, unseen: str) -> list[str]:
    """The row labels of one fold: ``models`` with ``Local`` expanded to ``Local-<site>`` for
    every training site."""
    return [expanded for label in experiment.models
            for expanded in ([f"{LOCAL}-{c}" for c in clients(experiment) if c != unseen] if label == LOCAL else [label])]


def only_rows(experiment: ExperimentConfig, rows: list[str]) -> ExperimentConfig:
    """``experiment`` with ``models`` cut down to ``rows`` (in the configuration's order), so that
    some rows run without the others; each of ``rows`` must be one of ``models``."""
    unknown = [row for row in rows if row not in experiment.models]
    if unknown:
        raise ConfigError(f"{experiment.name}: {', '.join(unknown)} not among the configuration's models "
                          f"({', '.join(experiment.models)})")
    return experiment.model_copy(update={"models": [m for m in experiment.models if m in rows]})


def run_matrix(experiment: ExperimentConfig, resume: bool = False, rerun: bool = False) -> list[Path]:
    """Run every cell not finished yet; returns the cells' run folders. A finished cell whose
    stored configuration differs from the one asked is refused (:class:`StaleCellError`) before
    any cell runs, unless ``resume`` (the cell's ``federation.rounds`` grew: it continues) or
    ``rerun`` (the cell is run again from scratch)."""
    from fedfms.federated.simulation import simulate  # heavy imports: not for the report, which needs local_site
    from fedfms.train.centralized import train_centralized
    from fedfms.train.sites import ordered_clients

    several = len(seeds(experiment)) > 1
    cells = [(label, unseen, seed) for seed in seeds(experiment) for unseen in folds(experiment)
             for label in fold_rows(experiment, unseen)]  # every cell of the first seed before any replicate
    configs = [cell_config(experiment, label, unseen, seed) for label, unseen, seed in cells]  # all errors first
    for config in configs:
        ordered_clients(config.data)  # every unseen client has a folder, before any run folder exists
    actions = [_decide(config, label, unseen, resume, rerun) for (label, unseen, _), config in zip(cells, configs)]
    for index, ((label, unseen, seed), config, action) in enumerate(zip(cells, configs, actions), start=1):
        logger.info("cell %d/%d %s, unseen %s%s: %s", index, len(cells), label, unseen,
                    f", seed {seed}" if several else "",
                    {"skip": "finished, skipped", "start": "starting", "resume": "resuming",
                     "rerun": "settings changed, running again"}[action])
        if action == "skip":
            continue
        if action == "rerun":
            shutil.rmtree(config.output_dir)
        runner = train_centralized if local_site(label) is not None or not ROWS[label].federated else simulate
        runner(config, resume=action == "resume")
    return [config.output_dir for config in configs]
