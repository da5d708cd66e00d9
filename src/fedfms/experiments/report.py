"""Tables and plots from finished runs: a per-client Dice/IoU table like the paper's Table 1
(Markdown and CSV), Dice per round per client, and image / ground truth / prediction overlays."""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedfms.errors import FedfmsError
from fedfms.run.log import read_rows
from fedfms.run.mlflow_tracking import attach_artifacts
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
    return _write_table_files(*table_rows(runs), out_dir)


def _write_table_files(header: list[str], rows: list[list[str]], out_dir: Path) -> str:
    with (out_dir / "table.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    markdown = "\n".join(lines)
    (out_dir / "table.md").write_text(markdown + "\n")
    return markdown


def _round_panels(count: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(4.2 * count, 3.4))
    return fig, list(fig.subplots(1, count, squeeze=False, sharey=True)[0])


def _save_round_panels(fig: Figure, axes: list, path: Path) -> None:
    for ax in axes:
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_dice_per_round(run_dirs: Sequence[Path], labels: Sequence[str], path: Path) -> None:
    """One panel per run: Dice of the global model per round for each client."""
    fig, axes = _round_panels(len(run_dirs))
    for ax, run_dir, label in zip(axes, run_dirs, labels):
        rows = [r for r in read_rows(run_dir) if r["kind"] == "eval"]
        for client in sorted({r["client"] for r in rows}):
            mine = [r for r in rows if r["client"] == client]
            style = "--" if mine[0]["role"] == "unseen" else "-"
            ax.plot([r["round"] for r in mine], [r["dice"] for r in mine], style, marker="o", ms=3,
                    label=f"{client}{' (unseen)' if mine[0]['role'] == 'unseen' else ''}")
        ax.set_title(label)
    _save_round_panels(fig, axes, path)


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


PAPER_TABLE1 = "paper_table1.yaml"


def paper_table1() -> dict[str, Any]:
    """The paper's Table 1 (transcribed; dataset -> model -> client -> scores in [0, 1])."""
    return yaml.safe_load(resources.files("fedfms.experiments").joinpath(PAPER_TABLE1).read_text())


def find_cells(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every finished leave-one-client-out run (folder with results.json that names an unseen
    client) at or below ``paths``; runs without an unseen client are skipped with a warning."""
    found = [load_results(f.parent) for path in paths for f in sorted(Path(path).rglob(RESULTS))]
    cells = [c for c in found if c.get("unseen") in c["clients"]]
    for skipped in (c for c in found if c.get("unseen") not in c["clients"]):
        warnings.warn(f"{skipped['run_dir']}: no unseen client, not a leave-one-client-out cell; left out of the report",
                      stacklevel=2)
    if not cells:
        raise ReportError(f"no finished leave-one-client-out run ({RESULTS} with an unseen client) "
                          f"under {', '.join(map(str, paths))}")
    return cells


class ReportError(FedfmsError, FileNotFoundError):
    """Nothing to report: the message names the folders searched."""


def _loco_header(clients: list[str], class_names: list[str]) -> list[str]:
    groups = [f"{c} {k}" if len(class_names) > 1 else c for c in [*clients, "Average"] for k in class_names]
    return ["Model"] + [f"{g} {m}" for g in groups for m in ("Dice", "IoU")]


def loco_table(cells: Sequence[dict[str, Any]], paper: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Table 1 layout: one row per model (a run's ``name``), for each unseen client its test Dice
    and IoU in % (per class when there are several, e.g. disc and cup), and the average over
    clients. With ``paper``, the paper's row follows each of ours where it reports that model."""
    labels = list(dict.fromkeys(c["name"] for c in cells))
    clients = list(dict.fromkeys(c["unseen"] for c in cells))
    class_names = cells[0]["class_names"]
    table = paper_table1()
    if paper is not None and paper not in table:
        raise ValueError(f"the paper's Table 1 has no dataset {paper!r}; choose one of {', '.join(table)}")
    reported = table[paper] if paper else {}
    by_cell = {(c["name"], c["unseen"]): c["clients"][c["unseen"]] for c in cells}
    rows = []
    for label in labels:
        ours = [[(by_cell[(label, u)]["dice_per_class"][k], by_cell[(label, u)]["iou_per_class"][k])
                 if (label, u) in by_cell else (math.nan, math.nan) for k in range(len(class_names))] for u in clients]
        rows.append([label, *_score_cells(ours, average=True)])
        if label in reported:
            theirs = [[_paper_score(reported[label], name, cls, len(class_names)) for cls in class_names]
                      for name in [*clients, "Average"]]
            rows.append([f"{label} (paper)", *_score_cells(theirs, average=False)])
    return _loco_header(clients, class_names), rows


#: Our class name -> the paper's: its optic-disc ("OD") figures come from the reference code's
#: disc channel, which is the rim (disc minus cup); prepare with a ``*-rim-cup`` preset to match.
PAPER_CLASS_NAMES = {"rim": "disc"}


def _paper_score(model: dict[str, Any], client: str, cls: str, num_classes: int) -> tuple[float, float]:
    entry = model.get(client)
    if entry is None:
        return math.nan, math.nan
    entry = entry.get(PAPER_CLASS_NAMES.get(cls, cls), {}) if num_classes > 1 else entry
    return entry.get("dice", math.nan), entry.get("iou", math.nan)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _score_cells(per_client: list[list[tuple[float, float]]], average: bool) -> list[str]:
    """Formatted Dice/IoU per client (outer list) and class (inner list); with ``average``, the
    mean over the clients that have a score is appended as a last client."""
    if average:
        classes = range(len(per_client[0]))
        per_client = [*per_client, [(_nanmean([c[k][0] for c in per_client]), _nanmean([c[k][1] for c in per_client]))
                                    for k in classes]]
    return [_fmt(v) for client in per_client for pair in client for v in pair]


def plot_unseen_dice(cells: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per unseen client: its Dice per round under each model."""
    clients = list(dict.fromkeys(c["unseen"] for c in cells))
    fig, axes = _round_panels(len(clients))
    for ax, client in zip(axes, clients):
        for cell in (c for c in cells if c["unseen"] == client):
            rows = [r for r in read_rows(Path(cell["run_dir"])) if r["kind"] == "eval" and r["client"] == client]
            ax.plot([r["round"] for r in rows], [r["dice"] for r in rows], marker="o", ms=2, label=cell["name"])
        ax.set_title(f"unseen: {client}")
    _save_round_panels(fig, axes, path)


def plot_client_bars(cells: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars: test Dice (mean over classes) of each unseen client under each model."""
    labels = list(dict.fromkeys(c["name"] for c in cells))
    clients = list(dict.fromkeys(c["unseen"] for c in cells))
    dice = {(c["name"], c["unseen"]): c["clients"][c["unseen"]]["dice"] for c in cells}
    fig = Figure(figsize=(max(5.0, 1.1 * len(clients) * max(1, len(labels)) / 2), 3.4))
    ax = fig.subplots()
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        ax.bar(np.arange(len(clients)) + i * width, [dice.get((label, c), np.nan) for c in clients], width, label=label)
    ax.set_xticks(np.arange(len(clients)) + 0.4 - width / 2, clients)
    ax.set_ylabel("Dice (unseen client)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_loco_report(run_dirs: Sequence[Path], out: Path, paper: str | None = None) -> str:
    """``fedfms report``: table.md/csv, unseen_dice_per_round.png, client_bars.png and
    report.md in ``out`` from every finished run under ``run_dirs`` (also attached to the runs
    tracked in MLflow); returns the Markdown table."""
    cells = find_cells(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = loco_table(cells, paper)
    markdown = _write_table_files(header, rows, out)
    plot_unseen_dice(cells, out / "unseen_dice_per_round.png")
    plot_client_bars(cells, out / "client_bars.png")
    protocols = sorted({c["evaluation"]["protocol"] for c in cells})
    note = (f"Dice and IoU in % on each unseen client (leave-one-client-out), metric protocol: "
            f"{', '.join(protocols)}; {len(cells)} runs.")
    if paper:
        note += " Rows marked (paper) are the FedFMS paper's Table 1, reference protocol."
    (out / "report.md").write_text("\n".join([
        "# fedfms report", "", note, "", markdown, "",
        "![Unseen-client Dice per round](unseen_dice_per_round.png)", "",
        "![Unseen-client Dice per model](client_bars.png)", ""]))
    attach_artifacts([Path(c["run_dir"]) for c in cells],
                     [out / name for name in ("report.md", "table.md", "unseen_dice_per_round.png", "client_bars.png")])
    return markdown
