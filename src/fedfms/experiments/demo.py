"""The main job for a new user: on a synthetic multi-center federation (or a prepared real one)
and the tiny SAM, run FedMSA, MSA, FedSAM and SAM with one unseen client, then write a
Table-1-style per-client Dice/IoU table, ``results.json``, a Markdown report and PNG plots."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfms.config import DataConfig, EvaluationConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig
from fedfms.data import ClientDataset, find_clients, make_synthetic_federation
from fedfms.experiments.centralized import train_centralized
from fedfms.experiments.report import load_results, plot_dice_per_round, plot_overlays, write_table
from fedfms.federated.simulation import simulate
from fedfms.models import load_checkpoint
from fedfms.run.log import write_json
from fedfms.run.state import LATEST

logger = logging.getLogger("fedfms")


@dataclass(frozen=True)
class DemoRun:
    """One row of the demo table: a label, federated or centralized, and the fine-tuning mode."""

    label: str
    federated: bool
    mode: str


DEMO_RUNS = (DemoRun("FedMSA", True, "msa"), DemoRun("MSA", False, "msa"),
             DemoRun("FedSAM", True, "sam"), DemoRun("SAM", False, "sam"))


@dataclass(frozen=True)
class DemoSettings:
    """Defaults sized for 2 CPU cores and well under 10 minutes."""

    rounds: int = 30
    image_size: int = 128
    clients: int = 4
    samples_per_client: tuple[int, ...] = (36, 28, 44, 24)
    batch_size: int = 6
    lr: float = 1e-3
    backbone: str = "tiny"
    seed: int = 0


def _prepare_data(out: Path, data_root: Path | None, settings: DemoSettings) -> Path:
    if data_root is not None:
        return data_root
    root = out / "data"
    if not (root.exists() and find_clients(root)):
        make_synthetic_federation(root, num_clients=settings.clients, num_classes=1,
                                  image_size=settings.image_size, mask_size=settings.image_size // 4,
                                  samples_per_client=settings.samples_per_client, seed=settings.seed)
    return root


def demo_config(run: DemoRun, data_root: Path, unseen: str, out: Path, settings: DemoSettings,
                num_classes: int, checkpoint: Path | None) -> RunConfig:
    """The configuration of one demo run."""
    return RunConfig(
        name=f"demo-{run.label}",
        output_dir=out / "runs" / run.label,
        model=ModelConfig(backbone=settings.backbone, mode=run.mode, num_classes=num_classes,
                          image_size=settings.image_size, checkpoint=checkpoint),
        data=DataConfig(root=data_root, unseen=unseen),
        train=TrainConfig(batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed),
        federation=FederationConfig(rounds=settings.rounds),
        evaluation=EvaluationConfig(),
    )


def _unseen_predictions(run_dirs: dict[str, Path], unseen_dir: Path, count: int = 3) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``count`` samples of the unseen client spread over its data: images (N, S, S, 3),
    truths (N, C, M, M) and each run's best-model prediction (N, C, M, M) at sigmoid > 0.5."""
    predictions, images, truths = {}, None, None
    for label, run_dir in run_dirs.items():
        model, cfg = load_checkpoint(run_dir / "best_model")
        model.eval()
        dataset = ClientDataset(unseen_dir, image_size=cfg.image_size, mask_size=cfg.mask_size)
        picks = np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).astype(int)
        batch = [dataset[int(i)] for i in picks]
        stacked = torch.stack([item["image"] for item in batch])
        with torch.no_grad():
            predictions[label] = (model(stacked) > 0).float().numpy()
        images = stacked.permute(0, 2, 3, 1).numpy()
        truths = torch.stack([item["mask"] for item in batch]).numpy()
    return images, truths, predictions


def run_demo(out: Path, data_root: Path | None = None, unseen: str | None = None, settings: DemoSettings = DemoSettings(),
             checkpoint: Path | None = None) -> dict[str, Any]:
    """Run the four demo rows (skipping finished ones), then write the report into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    root = _prepare_data(out, data_root, settings)
    clients = find_clients(root)
    if len(clients) < 2:
        raise ValueError(f"{root}: the demo needs at least 2 prepared clients, found {len(clients)}")
    unseen = unseen or clients[-1].name
    num_classes = ClientDataset(clients[0]).manifest.num_classes
    results = {}
    for run in DEMO_RUNS:
        config = demo_config(run, root, unseen, out, settings, num_classes, checkpoint)
        done = config.output_dir / "results.json"
        if done.exists():
            logger.info("%s: already finished, reusing %s", run.label, done)
        else:
            logger.info("=== %s (%s, mode %s), unseen client %s ===", run.label,
                        "federated" if run.federated else "centralized", run.mode, unseen)
            resume = (config.output_dir / "checkpoints" / LATEST).exists()
            (simulate if run.federated else train_centralized)(config, resume=resume)
        results[run.label] = load_results(config.output_dir)
    return write_demo_report(out, results, [c for c in clients if c.name == unseen][0])


def write_demo_report(out: Path, results: dict[str, dict[str, Any]], unseen_dir: Path) -> dict[str, Any]:
    """results.json, table.md/csv, dice_per_round.png, overlays.png and report.md in ``out``."""
    labels = list(results)
    table = write_table(list(results.items()), out)
    run_dirs = [Path(r["run_dir"]) for r in results.values()]
    plot_dice_per_round(run_dirs, labels, out / "dice_per_round.png")
    plot_overlays(*_unseen_predictions(dict(zip(labels, run_dirs)), unseen_dir), out / "overlays.png")
    write_json(out / "results.json", results)
    unseen = next(iter(results.values()))["unseen"]
    lines = [
        "# fedfms demo", "",
        f"Unseen client (never trains; its whole data is the test set, column marked `*`): **{unseen}**. "
        "Other columns: validation split of each training client. Dice and IoU in %, per image at "
        "sigmoid > 0.5, averaged per client.", "",
        table, "",
        "| run | best round | trainable parameters | seconds |", "|---|---|---|---|",
        *[f"| {k} | {r['best_round']} | {r['trainable_parameters']:,} | {r['seconds']:.0f} |" for k, r in results.items()],
        "", "![Dice per round](dice_per_round.png)", "", "![Unseen-client predictions](overlays.png)", "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    print(table)
    return results
