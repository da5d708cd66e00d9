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


def plot_overlays(samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], titles: Sequence[str], path: Path) -> None:
    """Rows of image | ground truth | prediction. Each sample: image (H, W, 3) in [0, 1],
    truth and prediction (C, h, w) in {0, 1}; classes are drawn as coloured contours-like fills."""
    colours = np.array([[1.0, 0.2, 0.2], [0.2, 0.6, 1.0], [0.2, 1.0, 0.3]])
    fig = Figure(figsize=(7.5, 2.5 * len(samples)))
    axes = fig.subplots(len(samples), 3, squeeze=False)
    for row, ((image, truth, pred), title) in enumerate(zip(samples, titles)):
        for col, (mask, name) in enumerate(((None, "image"), (truth, "ground truth"), (pred, "prediction"))):
            ax = axes[row][col]
            ax.imshow(image)
            if mask is not None:
                overlay = np.zeros((*mask.shape[1:], 4))
                for c in range(mask.shape[0]):
                    overlay[mask[c] > 0, :3] = colours[c % len(colours)]
                    overlay[mask[c] > 0, 3] = 0.45
                ax.imshow(overlay, extent=(0, image.shape[1], image.shape[0], 0))
            ax.set_title(f"{title}: {name}" if col == 0 else name, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
