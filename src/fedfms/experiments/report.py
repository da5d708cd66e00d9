"""Tables and plots from finished runs: a per-client Dice/IoU table like the paper's Table 1
(Markdown and CSV), Dice per round per client, and image / ground truth / prediction overlays."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedfms.run.log import read_rows
from fedfms.run.tracker import RESULTS


def load_results(run_dir: Path) -> dict[str, Any]:
    """``results.json`` of a finished run, with its folder under ``run_dir``."""
    path = run_dir / RESULTS
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no {RESULTS} (the run has not finished)")
    return {**json.loads(path.read_text()), "run_dir": str(run_dir)}


def _fmt(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def table_rows(runs: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Table-1-style comparison: one row per (label, results) run, Dice
    and IoU (%) per client (the unseen client's column is its test score, marked ``*``) and
    their average."""
    clients = sorted({c for _, r in runs for c in r["clients"]})
    unseen = {r["unseen"] for _, r in runs}
    header = ["Model"] + [f"{c}{'*' if c in unseen else ''} {m}"
                          for c in clients for m in ("Dice", "IoU")] + ["Avg Dice", "Avg IoU"]
    rows = []
    for label, r in runs:
        cells, dice, iou = [label], [], []
        for c in clients:
            score = r["clients"].get(c)
            d, i = (score["dice"], score["iou"]) if score else (math.nan, math.nan)
            cells += [_fmt(d), _fmt(i)]
            if not math.isnan(d):
                dice.append(d)
                iou.append(i)
        cells += [_fmt(float(np.mean(dice)) if dice else math.nan), _fmt(float(np.mean(iou)) if iou else math.nan)]
        rows.append(cells)
    return header, rows


def write_table(runs: Sequence[tuple[str, dict[str, Any]]], out_dir: Path) -> str:
    """Write ``table.md`` and ``table.csv`` for (label, results) runs; return the Markdown."""
    header, rows = table_rows(runs)
    with (out_dir / "table.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    markdown = "\n".join(lines)
    (out_dir / "table.md").write_text(markdown + "\n")
    return markdown


def plot_dice_per_round(run_dirs: Sequence[Path], labels: Sequence[str], path: Path) -> None:
    """One panel per run: Dice of the global model per round for each client."""
    fig = Figure(figsize=(4.2 * len(run_dirs), 3.4))
    axes = fig.subplots(1, len(run_dirs), squeeze=False, sharey=True)
    for ax, run_dir, label in zip(axes[0], run_dirs, labels):
        rows = [r for r in read_rows(run_dir) if r["kind"] == "eval"]
        for client in sorted({r["client"] for r in rows}):
            mine = [r for r in rows if r["client"] == client]
            style = "--" if mine[0]["role"] == "unseen" else "-"
            ax.plot([r["round"] for r in mine], [r["dice"] for r in mine], style, marker="o", ms=3,
                    label=f"{client}{' (unseen)' if mine[0]['role'] == 'unseen' else ''}")
        ax.set_title(label)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("Dice")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_overlays(images: np.ndarray, truths: np.ndarray, predictions: dict[str, np.ndarray], path: Path) -> None:
    """One row per sample: image | ground truth | each model's prediction.

    images: (N, H, W, 3) in [0, 1]; truths and every prediction: (N, C, h, w) in {0, 1}, drawn as
    translucent colour fills (one colour per class) scaled onto the image.
    """
    colours = np.array([[1.0, 0.2, 0.2], [0.2, 0.6, 1.0], [0.2, 1.0, 0.3]])
    columns = [("image", None), ("ground truth", truths), *predictions.items()]
    fig = Figure(figsize=(2.0 * len(columns), 2.0 * len(images)))
    axes = fig.subplots(len(images), len(columns), squeeze=False)
    for row, image in enumerate(images):
        for col, (name, masks) in enumerate(columns):
            ax = axes[row][col]
            ax.imshow(image)
            if masks is not None:
                overlay = np.zeros((*masks.shape[2:], 4))
                for c in range(masks.shape[1]):
                    overlay[masks[row, c] > 0] = [*colours[c % len(colours)], 0.45]
                ax.imshow(overlay, extent=(0, image.shape[1], image.shape[0], 0))
            if row == 0:
                ax.set_title(name, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
