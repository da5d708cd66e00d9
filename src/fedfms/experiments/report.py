"""Tables and plots from finished runs: a per-client Dice/IoU table like the paper's Table 1
(Markdown and CSV), Dice per round per client, and image / ground truth / prediction overlays."""

from __future__ import annotations

import csv
import json
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from fedfms.errors import FedfmsError
from fedfms.experiments.matrix import local_site
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


def row_order(labels: Sequence[str]) -> list[str]:
    """The one row order of every table and plot: rows grouped by model (in order of first
    appearance), within a model pretrained before random initialisation (``-PT``) and
    federated before centralized, e.g. FedDecoder, Decoder, FedDecoder-PT; each site's
    ``Local-<site>`` row after all the others, by site name."""
    def family(label: str) -> str:
        return label.removeprefix("Fed").removesuffix("-PT")

    families = list(dict.fromkeys(family(label) for label in labels))
    return sorted(dict.fromkeys(labels), key=lambda label: (local_site(label) is not None, local_site(label) or "",
                                                             families.index(family(label)), label.endswith("-PT"),
                                                             not label.startswith("Fed")))


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


def _write_table_files(header: list[str], rows: list[list[str]], out_dir: Path, stem: str = "table") -> str:
    with (out_dir / f"{stem}.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    markdown = "\n".join(lines)
    (out_dir / f"{stem}.md").write_text(markdown + "\n")
    return markdown


def _round_panels(count: int, rows: int = 1) -> tuple[Figure, list]:
    """``rows`` x ``count`` panels sharing the Dice axis, as a flat list, row by row."""
    fig = Figure(figsize=(4.2 * count + 1.6, 3.4 * rows))
    return fig, list(fig.subplots(rows, count, squeeze=False, sharey=True).ravel())


def _mark_best(ax, rows: list[dict[str, Any]], best_round: int | None, colour: Any) -> None:
    """A star on ``rows``' curve at the best round (the round whose model the tables score)."""
    at_best = [r["dice"] for r in rows if r["round"] == best_round]
    if at_best:
        ax.plot([best_round], at_best, "*", ms=11, color=colour, markeredgecolor="black", zorder=5)


def _save_round_panels(fig: Figure, axes: list, path: Path, order: Sequence[str] = (), columns: int = 0) -> Figure:
    """Integer round ticks (only the rounds there are when there are few), one legend for every
    panel's curves (each label once, in ``order`` where given) beside the last panel of the first
    row (``columns`` panels a row; all of them in one row by default) where it hides no curve, a
    star legend entry for the best round."""
    for ax in axes:
        rounds = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})
        if len(rounds) <= 5:
            ax.set_xticks(rounds)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    columns = columns or len(axes)
    for ax in axes[::columns]:
        ax.set_ylabel("Dice")
    curves = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    labels = sorted(curves, key=lambda label: order.index(label) if label in order else len(order))
    star = Line2D([], [], ls="", marker="*", ms=11, color="white", markeredgecolor="black")
    axes[columns - 1].legend([*(curves[label] for label in labels), star], [*labels, "best round (scored in the table)"],
                             fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def _best_round(run_dir: Path) -> int | None:
    path = run_dir / RESULTS
    return json.loads(path.read_text())["best_round"] if path.exists() else None


def plot_dice_per_round(run_dirs: Sequence[Path], labels: Sequence[str], path: Path) -> Figure:
    """One panel per run: Dice of the global model per round for each client, the best round
    starred."""
    fig, axes = _round_panels(len(run_dirs))
    for ax, run_dir, label in zip(axes, run_dirs, labels):
        rows = [r for r in read_rows(run_dir) if r["kind"] == "eval"]
        best = _best_round(run_dir)
        for client in sorted({r["client"] for r in rows}):
            mine = [r for r in rows if r["client"] == client]
            style = "--" if mine[0]["role"] == "unseen" else "-"
            [line] = ax.plot([r["round"] for r in mine], [r["dice"] for r in mine], style, marker="o", ms=3,
                             label=f"{client}{' (unseen)' if mine[0]['role'] == 'unseen' else ''}")
            _mark_best(ax, mine, best, line.get_color())
        ax.set_title(f"{label} (best round {best})" if best is not None else label)
    return _save_round_panels(fig, axes, path)


#: Outline colours of the overlays, chosen to stand out on red-orange tissue and on grey scans.
TRUTH_COLOUR, PREDICTION_COLOUR = "#00ff66", "#00b7ff"
CLASS_STYLES = ("solid", "dashed", "dotted")


def _outline(ax, masks: np.ndarray, colour: str, image_shape: tuple[int, ...]) -> None:
    """Contours of each class of ``masks`` (C, h, w), scaled onto an image of ``image_shape``
    (mask pixel centres placed on the image's pixel grid)."""
    h, w = masks.shape[1:]
    xs = (np.arange(w) + 0.5) * image_shape[1] / w - 0.5
    ys = (np.arange(h) + 0.5) * image_shape[0] / h - 0.5
    for c, mask in enumerate(masks):
        if mask.any() and not mask.all():
            ax.contour(xs, ys, mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.4,
                       linestyles=CLASS_STYLES[c % len(CLASS_STYLES)])


def plot_overlays(images: np.ndarray, truths: np.ndarray, predictions: dict[str, np.ndarray], path: Path,
                  class_names: Sequence[str] = ()) -> Figure:
    """One row per sample: the image, then each model's prediction, outlined in blue over the
    ground truth outlined in green (one line style per class: solid, dashed, dotted).

    images: (N, H, W, 3) in [0, 1]; truths and every prediction: (N, C, h, w) in {0, 1}.
    """
    fig = Figure(figsize=(2.2 * (1 + len(predictions)), 2.2 * len(images) + 0.5))
    axes = fig.subplots(len(images), 1 + len(predictions), squeeze=False)
    for row, image in enumerate(images):
        for col, name in enumerate(["image + ground truth", *predictions]):
            ax = axes[row][col]
            ax.imshow(image)
            _outline(ax, truths[row], TRUTH_COLOUR, image.shape)
            if col:
                _outline(ax, predictions[name][row], PREDICTION_COLOUR, image.shape)
            if row == 0:
                ax.set_title(name, fontsize=9)
            ax.axis("off")
    handles = [Line2D([], [], color=TRUTH_COLOUR, lw=2, label="ground truth"),
               Line2D([], [], color=PREDICTION_COLOUR, lw=2, label="prediction")]
    handles += [Line2D([], [], color="grey", lw=1.4, linestyle=CLASS_STYLES[k % len(CLASS_STYLES)], label=name)
                for k, name in enumerate(class_names) if len(class_names) > 1]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.45 / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=90)
    return fig


PAPER_TABLE1 = "paper_table1.yaml"


def paper_table1() -> dict[str, Any]:
    """The paper's Table 1 (transcribed; dataset -> model -> client -> scores in [0, 1])."""
    return yaml.safe_load(resources.files("fedfms.experiments").joinpath(PAPER_TABLE1).read_text())


def find_cells(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Every finished leave-one-client-out run (folder with results.json that names an unseen
    client) at or below ``paths``; runs without an unseen client are skipped with a warning."""
    files = dict.fromkeys(f for path in paths for f in sorted(Path(path).rglob(RESULTS)))  # a run given twice counts once
    found = [load_results(f.parent) for f in files]
    cells = [c for c in found if c.get("unseen") in c["clients"]]
    for skipped in (c for c in found if c.get("unseen") not in c["clients"]):
        warnings.warn(f"{skipped['run_dir']}: no unseen client, not a leave-one-client-out cell; left out of the report",
                      stacklevel=2)
    if not cells:
        raise ReportError(f"no finished leave-one-client-out run ({RESULTS} with an unseen client) "
                          f"under {', '.join(map(str, paths))}")
    return distinct_names(merge_seeds(cells))


def _seed(cell: dict[str, Any]) -> int | None:
    """The ``train.seed`` a run was made with (``None`` where its config.yaml is missing)."""
    stored = Path(cell["run_dir"]) / "config.yaml"
    return yaml.safe_load(stored.read_text())["train"]["seed"] if stored.exists() else None


_SCORES = ("dice", "iou", "dice_per_class", "iou_per_class")


def _mean_scores(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One client's entry of several runs, with each score of :data:`_SCORES` their mean."""
    merged = dict(scores[0])
    for key in (k for k in _SCORES if k in merged):
        values = [s[key] for s in scores]
        merged[key] = ([_nanmean(list(v)) for v in zip(*values, strict=True)] if isinstance(values[0], list)
                       else _nanmean(values))
    return merged


def merge_seeds(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of one row, fold and kind that differ in ``train.seed`` (a matrix's ``seeds``)
    become one cell: every client's scores their mean, ``replicates`` each seed's run folder
    and unseen Dice, ``run_dir`` the lowest seed's run (the one the per-round plot draws). Runs
    that share a seed stay apart (:func:`distinct_names` tells them apart)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["name"], cell["unseen"], cell.get("kind", "run")), []).append(cell)
    merged = []
    for group in groups.values():
        seeds = [_seed(c) for c in group]
        if len(group) == 1 or None in seeds or len(set(seeds)) < len(seeds):
            merged.extend(group)
            continue
        runs = sorted(zip(seeds, group), key=lambda pair: pair[0])
        shared = [name for name in runs[0][1]["clients"] if all(name in c["clients"] for _, c in runs)]
        merged.append({**runs[0][1], "clients": {name: _mean_scores([c["clients"][name] for _, c in runs])
                                                 for name in shared},
                       "replicates": [{"seed": seed, "run_dir": c["run_dir"], "dice": c["clients"][c["unseen"]]["dice"]}
                                      for seed, c in runs]})
    return merged


def distinct_names(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: where several runs share a ``name`` on one unseen client (the federated
    and the centralized run of one YAML), that name's runs get their kind, then the shortest
    tail of their folder that tells them apart, added to it; other names stay as they are."""
    for labels in (_kinds, _folder_tails):
        counts = Counter((c["name"], c["unseen"]) for c in cells)
        shared = {name for (name, _), count in counts.items() if count > 1}
        clashing = [c for c in cells if c["name"] in shared]
        added = dict(zip(map(id, clashing), labels(clashing), strict=True))
        cells = [{**c, "name": f"{c['name']} ({added[id(c)]})"} if id(c) in added else c for c in cells]
    return cells


def _kinds(cells: list[dict[str, Any]]) -> list[str]:
    return [c.get("kind", "run") for c in cells]


def _folder_tails(cells: list[dict[str, Any]]) -> list[str]:
    """The fewest trailing parts of the cells' run folders that differ between all of them."""
    parts = [Path(c["run_dir"]).parts for c in cells]
    for n in range(1, max(map(len, parts), default=0) + 1):
        tails = ["/".join(p[-n:]) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return [c["run_dir"] for c in cells]


class ReportError(FedfmsError, FileNotFoundError):
    """Nothing to report: the message names the folders searched."""


def _with_folds(label: str, cells: Sequence[dict[str, Any]], folds: list[str]) -> str:
    """``label``, followed by the folds it was run on where those are not all of ``folds`` (its
    average covers those only), e.g. ``FedMSA (FG only)``."""
    mine = [fold for fold in folds if any(c["name"] == label and c["unseen"] == fold for c in cells)]
    return label if len(mine) == len(folds) else f"{label} ({', '.join(mine)} only)"


def _loco_header(clients: list[str], class_names: list[str]) -> list[str]:
    groups = [f"{c} {k}" if len(class_names) > 1 else c for c in [*clients, "Average"] for k in class_names]
    return ["Model"] + [f"{g} {m}" for g in groups for m in ("Dice", "IoU")]


def loco_table(cells: Sequence[dict[str, Any]], paper: str | None = None) -> tuple[list[str], list[list[str]]]:
    """Table 1 layout: one row per model (a run's ``name``), for each unseen client its test Dice
    and IoU in % (per class when there are several, e.g. disc and cup), and the average over
    clients (a row run on fewer folds says which). With ``paper``, the paper's row follows each
    of ours where it reports that model on one of our unseen clients (matched by name); its
    Average only when our matrix has every client the paper averages over (otherwise it
    averages other clients than ours: ``–``)."""
    labels = row_order([c["name"] for c in cells])
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
        rows.append([_with_folds(label, cells, clients), *_score_cells(ours, average=True)])
        paper_clients = set(reported.get(label, {})) - {"Average"}
        if paper_clients & set(clients):  # the paper's row only beside clients it reports
            average = "Average" if paper_clients <= set(clients) else None  # else over other clients than ours
            theirs = [[_paper_score(reported[label], name, cls, len(class_names)) for cls in class_names]
                      for name in [*clients, average]]
            rows.append([f"{label} (paper)", *_score_cells(theirs, average=False)])
    return _loco_header(clients, class_names), rows


def own_site_table(cells: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Dice and IoU in % (mean over classes) of each model on each training site's own
    validation split, averaged over the folds in which the site trained: the other half of
    "does federating beat my own data alone", beside each ``Local-<site>`` row's own site."""
    labels = row_order([c["name"] for c in cells])
    sites = list(dict.fromkeys(name for c in cells for name, s in c["clients"].items() if s["split"] == "val"))
    rows = []
    for label in labels:
        mine = [c["clients"] for c in cells if c["name"] == label]
        scores = [[(_nanmean([m[site]["dice"] for m in mine if m.get(site, {}).get("split") == "val"]),
                    _nanmean([m[site]["iou"] for m in mine if m.get(site, {}).get("split") == "val"]))] for site in sites]
        rows.append([label, *_score_cells(scores, average=False)])
    return ["Model"] + [f"{site} {m}" for site in sites for m in ("Dice", "IoU")], rows


#: Our class name -> the paper's: its optic-disc ("OD") figures come from the reference code's
#: disc channel, which is the rim (disc minus cup); prepare with a ``*-rim-cup`` preset to match.
PAPER_CLASS_NAMES = {"rim": "disc"}


def _paper_score(model: dict[str, Any], client: str | None, cls: str, num_classes: int) -> tuple[float, float]:
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


def row_colour(index: int, rows: int) -> tuple[float, float, float, float]:
    """The colour of the ``index``-th of ``rows`` rows in every plot: matplotlib's ten-colour
    cycle while it is enough, else ``tab20``'s twenty, so no two rows of a matrix share one."""
    palette = colormaps["tab10" if rows <= 10 else "tab20"]
    return palette(index % palette.N)


#: Most rows one per-round panel holds; a matrix with more is drawn one panel per row group.
ROWS_PER_PANEL = 10


def row_group(label: str) -> str:
    """Which of a matrix's three kinds of row ``label`` is: federated, centralized (pooled data)
    or one site alone."""
    if local_site(label) is not None:
        return "each site alone"
    return "federated" if label.startswith("Fed") else "centralized"


def plot_unseen_dice(cells: Sequence[dict[str, Any]], path: Path) -> Figure:
    """One panel per unseen client: its Dice per round under each model (a model keeps its
    colour in every panel), the best round starred, the panels side by side. A matrix of more
    than ``ROWS_PER_PANEL`` rows gets a row of panels per unseen client instead, one panel per row
    group (federated, centralized, each site alone), so no panel is crowded."""
    clients = list(dict.fromkeys(c["unseen"] for c in cells))
    order = row_order([c["name"] for c in cells])
    groups = list(dict.fromkeys(row_group(name) for name in order)) if len(order) > ROWS_PER_PANEL else [None]
    columns, panel_rows = (len(groups), len(clients)) if len(groups) > 1 else (len(clients), 1)
    fig, axes = _round_panels(columns, panel_rows)
    panels = [(client, group) for client in clients for group in groups]
    for ax, (client, group) in zip(axes, panels):
        mine = [c for c in cells if c["unseen"] == client and group in (None, row_group(c["name"]))]
        for cell in sorted(mine, key=lambda c: order.index(c["name"])):
            rows = [r for r in read_rows(Path(cell["run_dir"])) if r["kind"] == "eval" and r["client"] == client]
            colour = row_colour(order.index(cell["name"]), len(order))
            ax.plot([r["round"] for r in rows], [r["dice"] for r in rows], marker="o", ms=2, color=colour,
                    label=cell["name"])
            _mark_best(ax, rows, cell["best_round"], colour)
        ax.set_title(f"unseen: {client}" + (f", {group}" if group else ""))
    return _save_round_panels(fig, axes, path, order, columns)


#: The share of a row's reported unseen Dice whose first reaching is timed.
REACHED = 0.95


def _mib_per_client_round(run_dir: Path) -> float:
    """MiB one training site sends per round (its update as the server received it); 0 where
    nothing travels (centralized and Local rows)."""
    sent = [r.get("bytes_received", 0) for r in read_rows(run_dir) if r["kind"] == "train"]
    return sum(sent) / len(sent) / 2**20 if sent else 0.0


def _seconds_to_reach(run_dir: Path, final: float) -> float:
    """Wall seconds from the run's start to the end of the first round whose unseen Dice reached
    ``REACHED`` of ``final``; NaN when ``final`` is 0 (nothing to reach) or it never did."""
    elapsed = 0.0
    for row in (r for r in read_rows(run_dir) if r["kind"] == "round"):
        elapsed += row.get("seconds", 0.0)
        if final > 0 and row.get("unseen_dice", -1.0) >= REACHED * final:
            return elapsed
    return math.nan


def cell_runs(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs behind a cell: each seed's (:func:`merge_seeds`), or the one run, with its
    ``run_dir`` and unseen ``dice``."""
    return cell.get("replicates") or [{"run_dir": cell["run_dir"], "dice": cell["clients"][cell["unseen"]]["dice"]}]


def cost_table(cells: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per row, mean over its folds (and seeds): unseen Dice in %, MiB a site sends per round,
    and wall seconds until a run reached ``REACHED`` of its own unseen Dice (the
    accuracy-for-traffic and accuracy-for-time trade-offs); a row run on fewer folds than the
    others says which."""
    folds = list(dict.fromkeys(c["unseen"] for c in cells))
    rows = []
    for label in row_order([c["name"] for c in cells]):
        mine = [c for c in cells if c["name"] == label]
        dice = _nanmean([c["clients"][c["unseen"]]["dice"] for c in mine])
        runs = [(Path(r["run_dir"]), r["dice"]) for c in mine for r in cell_runs(c)]
        mib = _nanmean([_mib_per_client_round(run_dir) for run_dir, _ in runs])
        seconds = _nanmean([_seconds_to_reach(run_dir, run_dice) for run_dir, run_dice in runs])
        rows.append([_with_folds(label, cells, folds), _fmt(dice), f"{mib:.2f}",
                     "–" if math.isnan(seconds) else f"{seconds:.0f}"])
    header = ["Model", "unseen Dice %", "MiB per site and round", f"s to {100 * REACHED:.0f} % of its unseen Dice"]
    return header, rows


def seeds_table(cells: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Per row and fold run with several seeds: the seeds, the unseen Dice (%) of each, their
    mean and sample standard deviation (the spread one seed's figure hides)."""
    rows = []
    order = row_order([c["name"] for c in cells])
    for cell in sorted((c for c in cells if c.get("replicates")), key=lambda c: (order.index(c["name"]), c["unseen"])):
        dice = [r["dice"] for r in cell["replicates"]]
        rows.append([cell["name"], cell["unseen"], ", ".join(str(r["seed"]) for r in cell["replicates"]),
                     ", ".join(_fmt(d) for d in dice), _fmt(float(np.mean(dice))), _fmt(float(np.std(dice, ddof=1)))])
    return ["Model", "unseen", "seeds", "unseen Dice % per seed", "mean", "sd"], rows


Box = tuple[float, float, float, float]  # x0, x1, y0, y1 in data units


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]


def _place_labels(points: Sequence[tuple[str, float, float]], sizes: dict[str, tuple[float, float]],
                  marker: tuple[float, float], shift: float, ylim: tuple[float, float]) -> list[float]:
    """The height of each point's label (``points``: label, x, y, highest y first), starting
    ``shift`` right of its point: at its point's height where it covers no label placed before it
    and no marker, else the nearest free line below, else above, inside ``ylim``. ``sizes``:
    each label's (width, height), ``marker``: half a marker's (width, height), in data units."""
    markers = [(x - marker[0], x + marker[0], y - marker[1], y + marker[1]) for _, x, y in points]
    placed: list[Box] = []
    heights = []
    for index, (label, x, y) in enumerate(points):
        width, height = sizes[label]
        below = [y - k * height for k in range(len(points) + 1) if y - (k + 0.5) * height >= ylim[0]]
        above = [y + k * height for k in range(1, len(points) + 1) if y + (k + 0.5) * height <= ylim[1]]
        boxes = [(x + shift, x + shift + width, h - height / 2, h + height / 2) for h in below + above]
        others = placed + markers[:index] + markers[index + 1:]  # its own point lies left of it
        free = [b for b in boxes if not any(_overlaps(b, other) for other in others)]
        box = free[0] if free else (x + shift, x + shift + width, y - height / 2, y + height / 2)
        placed.append(box)
        heights.append((box[2] + box[3]) / 2)
    return heights


def _label_points(ax, points: Sequence[tuple[str, float, float]]) -> None:
    """Label each point (label, MiB, Dice) of ``ax`` right of it, or on the nearest line below
    (else above) that covers no other label and no point, with a leader line then; the axes
    widen to the right so that the rightmost label stays inside them."""
    renderer = FigureCanvasAgg(ax.figure).get_renderer()
    extents = {label: ax.text(0, 0, label, fontsize=8).get_window_extent(renderer) for label, _, _ in points}
    for text in list(ax.texts):
        text.remove()
    frame = ax.get_window_extent(renderer)
    shift = 0.02 * max([1.0, *(m for _, m, _ in points)])  # labels start right of their point
    left, _ = ax.get_xlim()
    share = min(0.5, max(e.width for e in extents.values()) / frame.width)
    ax.set_xlim(left, (max(m for _, m, _ in points) + shift - share * left) / (1 - share))
    x_per_pixel = np.diff(ax.get_xlim())[0] / frame.width
    y_per_pixel = np.diff(ax.get_ylim())[0] / frame.height
    pad = 3  # pixels of room around a label
    sizes = {label: ((e.width + pad) * x_per_pixel, (e.height + pad) * y_per_pixel) for label, e in extents.items()}
    marker = (4 * x_per_pixel, 4 * y_per_pixel)  # half of a 5 pt marker in pixels, with room
    order = sorted(points, key=lambda p: -p[2])
    for (label, mib, dice), text_y in zip(order, _place_labels(order, sizes, marker, shift, ax.get_ylim())):
        leader = None if text_y == dice else {"arrowstyle": "-", "lw": 0.5, "color": "grey"}
        ax.annotate(label, (mib, dice), xytext=(mib + shift, text_y), fontsize=8, va="center", arrowprops=leader)


def plot_dice_against_traffic(cells: Sequence[dict[str, Any]], path: Path) -> Figure:
    """One point per row: its unseen Dice (mean over folds) against the MiB a site sends per
    round, each labelled clear of the other labels and points (:func:`_label_points`)."""
    points = [(label, float(mib), float(dice)) for label, dice, mib, _ in cost_table(cells)[1] if dice != "–"]
    fig = Figure(figsize=(7.5, 4))
    ax = fig.subplots()
    for k, (_, mib, dice) in enumerate(points):
        ax.plot([mib], [dice], "o", ms=5, color=row_colour(k, len(points)))
    ax.set_xlabel("MiB a site sends per round (0: nothing travels)")
    ax.set_ylabel("unseen Dice % (mean over folds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if points:
        _label_points(ax, points)
    fig.savefig(path, dpi=130)
    return fig


def plot_client_bars(cells: Sequence[dict[str, Any]], path: Path) -> Figure:
    """Grouped bars: test Dice (mean over classes) of each unseen client under each model, each
    bar labelled with its value (so a Dice of 0 shows too)."""
    labels = row_order([c["name"] for c in cells])
    clients = list(dict.fromkeys(c["unseen"] for c in cells))
    dice = {(c["name"], c["unseen"]): c["clients"][c["unseen"]]["dice"] for c in cells}
    fig = Figure(figsize=(max(5.0, 1.1 * len(clients) * max(1, len(labels)) / 2), 3.4))
    ax = fig.subplots()
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        bars = ax.bar(np.arange(len(clients)) + i * width, [dice.get((label, c), np.nan) for c in clients], width,
                      label=label, color=row_colour(i, len(labels)))
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.set_xticks(np.arange(len(clients)) + 0.4 - width / 2, clients)
    ax.set_ylabel("Dice (unseen client)")
    ax.set_ylim(0, 1.08)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


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
    plot_dice_against_traffic(cells, out / "dice_against_traffic.png")
    protocols = sorted({c["evaluation"]["protocol"] for c in cells})
    note = (f"Dice and IoU in % on each unseen client (leave-one-client-out), metric protocol: "
            f"{', '.join(protocols)}; {sum(len(cell_runs(c)) for c in cells)} runs.")
    if paper:
        note += " Rows marked (paper) are the FedFMS paper's Table 1, reference protocol."
    local = any(local_site(c["name"]) for c in cells)
    if local:
        note += (" A Local-<site> row is the model trained on that site's data alone, with the same budget; it has no "
                 "score where its own site is the unseen one, so its average is over the other folds.")
    own = ["", "## Each training site's own validation split", "",
           "Dice and IoU in % on each site's validation cases, mean over the folds in which it trained.", "",
           _write_table_files(*own_site_table(cells), out, "own_site"), ""] if local else []
    seeds = seeds_table(cells)
    spread = ["", "## Spread over seeds", "",
              "Rows run with several seeds (`seeds` of the matrix): the tables give their mean; the per-round "
              "plot shows the lowest seed's run.", "",
              _write_table_files(*seeds, out, "seeds"), ""] if seeds[1] else []
    cost = ["", "## What each row costs", "",
            f"Traffic: what one training site sends per round; time: wall seconds from the run's start until its "
            f"unseen Dice first reached {100 * REACHED:.0f} % of the Dice reported above (mean over folds).", "",
            _write_table_files(*cost_table(cells), out, "cost"), "",
            "![Unseen Dice against traffic](dice_against_traffic.png)", ""]
    (out / "report.md").write_text("\n".join([
        "# fedfms report", "", note, "", markdown, *own, *spread, *cost, "",
        "![Unseen-client Dice per round](unseen_dice_per_round.png)", "",
        "![Unseen-client Dice per model](client_bars.png)", ""]))
    attach_artifacts([Path(c["run_dir"]) for c in cells],
                     [out / name for name in ("report.md", "table.md", "cost.md", "unseen_dice_per_round.png",
                                              "client_bars.png", "dice_against_traffic.png")])
    return markdown
