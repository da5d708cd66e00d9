"""Dice after a fixed short training run in fp32 and in bf16 autocast (issue 13: mixed precision
by default must not cost accuracy).

Usage: ``PYTHONPATH=src python benchmarks/precision_dice.py [--seeds 3] [--epochs 6]``

The tiny SAM in FedMSA mode (128 px, random initialisation, lr 1e-3, batch 6, BCE) trains
``epochs`` epochs on one synthetic site (two classes) and is scored on another site's images,
once per precision and model seed; the two precisions start from the same weights and see the
same batches. Printed: validation Dice per seed and precision, and the fp32 - bf16 difference
beside the spread between seeds (the noise a difference is judged against).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from fedfms.config import EvaluationConfig, ModelConfig, TrainConfig
from fedfms.data import ClientDataset, make_synthetic_federation
from fedfms.models import build_model
from fedfms.train.local import evaluate, make_loader, train_epoch

SIZE, MASK = 128, 32


def dice_after_training(precision: str, seed: int, epochs: int, train: ClientDataset, test: ClientDataset) -> float:
    cfg = ModelConfig(backbone="tiny", mode="msa", image_size=SIZE, num_classes=2, pretrained=False)
    model = build_model(cfg, seed=seed)
    train_cfg = TrainConfig(batch_size=6, lr=1e-3, precision=precision)
    device = torch.device("cpu")
    for epoch in range(epochs):
        loader = make_loader(train, train_cfg.batch_size, shuffle=True, seed=seed * 100 + epoch)
        train_epoch(model, loader, train_cfg, cfg.num_classes, device, desc=f"{precision} seed {seed}")
    scores = evaluate(model, make_loader(test, 8, shuffle=False, seed=0), ["disc", "cup"], EvaluationConfig(),
                      device, precision=precision)
    return float(scores["dice"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sites = make_synthetic_federation(Path(tmp), num_clients=2, num_classes=2, image_size=SIZE, mask_size=MASK,
                                          samples_per_client=(48, 24), seed=1)
        train, test = (ClientDataset(s, image_size=SIZE, mask_size=MASK) for s in sites)
        dice = {p: [dice_after_training(p, seed, args.epochs, train, test) for seed in range(args.seeds)]
                for p in ("fp32", "bf16")}
    print(f"tiny SAM FedMSA, {SIZE} px, {args.epochs} epochs of 48 images, Dice on 24 images of another site")
    print("seed | fp32 | bf16 | fp32 - bf16")
    for seed, (a, b) in enumerate(zip(dice["fp32"], dice["bf16"], strict=True)):
        print(f"{seed} | {a:.4f} | {b:.4f} | {a - b:+.4f}")
    differences = [a - b for a, b in zip(dice["fp32"], dice["bf16"], strict=True)]
    print(f"mean fp32 {statistics.mean(dice['fp32']):.4f} (seed spread {max(dice['fp32']) - min(dice['fp32']):.4f}), "
          f"mean bf16 {statistics.mean(dice['bf16']):.4f} (seed spread {max(dice['bf16']) - min(dice['bf16']):.4f}), "
          f"mean difference {statistics.mean(differences):+.4f}")


if __name__ == "__main__":
    main()
