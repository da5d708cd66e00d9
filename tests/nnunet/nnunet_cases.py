"""Synthetic 2D cases as nnU-Net reads them, and the same cases as an nnU-Net raw data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fedfms.nnunet.workspace import nnunet_case


def synthetic_cases(count: int, side: int = 64, seed: int = 0, classes: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` cases: noisy 8-bit RGB images (values k/255, as a prepared client stores them)
    with a bright foreground square whose place and size vary; optic-cup-like nesting of class 2
    in class 1 when ``classes`` is 2."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        image = rng.integers(0, 90, (3, side, side))
        mask = np.zeros((classes, side, side))
        y, x, size = rng.integers(4, side // 2, 3)
        image[:, y:y + size, x:x + size] += rng.integers(100, 160)
        mask[0, y:y + size, x:x + size] = 1
        if classes == 2:
            mask[1, y + size // 4:y + size // 2, x + size // 4:x + size // 2] = 1
        cases.append(nnunet_case(image / 255.0, mask))
    return cases


def write_raw_dataset(cases: list[tuple[np.ndarray, np.ndarray]], folder: Path, dataset: dict) -> None:
    """The cases as an nnU-Net raw data set of PNGs (what ``nnUNetv2_extract_fingerprint`` reads)."""
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i, (data, seg) in enumerate(cases):
        rgb = np.rint(data[:, 0].transpose(1, 2, 0)).astype(np.uint8)
        Image.fromarray(rgb).save(folder / "imagesTr" / f"case{i:03d}_0000.png")
        Image.fromarray(seg[0, 0].astype(np.uint8)).save(folder / "labelsTr" / f"case{i:03d}.png")
    raw = {k: v for k, v in dataset.items() if k != "overwrite_image_reader_writer"}
    (folder / "dataset.json").write_text(json.dumps({**raw, "numTraining": len(cases)}))
