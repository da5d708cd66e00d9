"""Paired comparisons of two rows on the same unseen patients: is a difference of mean Dice
more than a few patients?

Each finished run's best model is scored again on its unseen client's data, one Dice per case
(patient, volume, slide): pooled over its images with the ``case`` protocol, the mean of its
images' Dice with the others, since a case's images are not independent. This runs where the
unseen site's data lies, like any evaluation: the per-case scores stay on this machine, kept in
the run's folder (``unseen_case_dice.json``) with a digest of what they depend on, so a later
table rescores only runs whose best model, configuration or unseen data changed. A case's Dice
in a row is its mean over the row's seeds. For each pair of rows the cases of the
folds that both rows ran are paired, and the two-sided Wilcoxon signed-rank test (SciPy)
says how likely a split of wins and losses at least this uneven is if neither row is better.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import wilcoxon

from fedfms.config import load_config
from fedfms.data.manifest import MANIFEST_NAME
from fedfms.errors import FedfmsError
from fedfms.experiments.report import cell_runs, find_cells
from fedfms.io import describe
from fedfms.models import load_checkpoint
from fedfms.models.checkpoint import CONFIG_FILE
from fedfms.run.best import BEST_MODEL
from fedfms.run.log import write_json
from fedfms.train.sites import load_site, ordered_clients, site_scores

logger = logging.getLogger("fedfms")

CASE_SCORES = "unseen_case_dice.json"


class PairedError(FedfmsError):
    """A pair that cannot be compared: a row without runs, or two rows without a common fold."""


@dataclass(frozen=True)
class PairedComparison:
    """Two rows on the same cases of the folds both ran: means and the median of the
    per-case differences (first minus second) in Dice, how many cases each row scored higher
    on, and the Wilcoxon signed-rank test's two-sided p-value (NaN where every case ties)."""

    first: str
    second: str
    folds: tuple[str, ...]
    cases: int
    first_mean: float
    second_mean: float
    median_difference: float
    first_higher: int
    second_higher: int
    p_value: float


def _scores_key(run_dir: Path, client_dir: Path) -> str:
    """Digest of the run's configuration, its best model's description (which holds the digest
    of its weights) and the unseen client's manifest: what a run's per-case scores depend on."""
    digest = hashlib.sha256()
    for path in (run_dir / "config.yaml", run_dir / BEST_MODEL / CONFIG_FILE, client_dir / MANIFEST_NAME):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _kept_scores(path: Path, key: str) -> dict[str, float] | None:
    """The per-case Dice kept in ``path`` if it was written for ``key``; None otherwise (no file,
    another key, or a file that is not what this module writes)."""
    try:
        kept = json.loads(path.read_text())
        return {str(case): float(dice) for case, dice in kept["dice"].items()} if kept["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def case_dice(run_dir: Path) -> dict[str, float]:
    """Dice (mean over classes) of each case of the run's unseen client under its best model,
    by case id (see :meth:`~fedfms.train.metrics.ScoreAccumulator.per_case`); read from
    ``run_dir/unseen_case_dice.json`` where it was kept for the same model, configuration and data."""
    config = load_config(run_dir / "config.yaml")
    folder = next(path for path in ordered_clients(config.data) if path.name == config.data.unseen)
    key = _scores_key(run_dir, folder)
    kept = _kept_scores(run_dir / CASE_SCORES, key)
    if kept is not None:
        return kept
    started = time.perf_counter()
    model, model_cfg = load_checkpoint(run_dir / BEST_MODEL)
    _, scores = site_scores(model, load_site(folder, config), config, model_cfg)
    dice = scores.per_case()
    logger.info("%s: %d cases of %s scored in %.1f s", run_dir, len(dice), folder.name, time.perf_counter() - started)
    try:
        write_json(run_dir / CASE_SCORES, {"key": key, "client": folder.name, "dice": dice})
    except OSError as err:
        logger.warning("%s: the per-case scores are not kept (%s); the next table scores them again",
                       run_dir, describe(err, run_dir / CASE_SCORES))
    return dice


def paired_statistics(first: Sequence[float], second: Sequence[float]) -> tuple[float, int, int, float]:
    """The median of ``first - second``, how many pairs each side is higher in, and the
    two-sided Wilcoxon signed-rank p-value (exact for small samples; NaN if all pairs tie)."""
    difference = np.asarray(first, dtype=float) - np.asarray(second, dtype=float)
    p_value = math.nan if not difference.any() else float(wilcoxon(difference).pvalue)
    return float(np.median(difference)), int((difference > 0).sum()), int((difference < 0).sum()), p_value


def _row_case_dice(cells: list[dict], row: str) -> dict[str, dict[str, float]]:
    """fold -> case -> Dice of ``row``, each case's mean over the row's seeds."""
    per_fold = {}
    for cell in (c for c in cells if c["name"] == row):
        runs = [case_dice(Path(run["run_dir"])) for run in cell_runs(cell)]
        per_fold[cell["unseen"]] = {case: float(np.mean([run[case] for run in runs])) for case in runs[0]}
    return per_fold


def compare_rows(run_dirs: Sequence[Path], pairs: Sequence[tuple[str, str]]) -> list[PairedComparison]:
    """One :class:`PairedComparison` per pair of row names, from the finished runs under
    ``run_dirs`` (each run scored once, however many pairs it is in)."""
    cells = find_cells(run_dirs)
    rows = {row for pair in pairs for row in pair}
    missing = sorted(rows - {c["name"] for c in cells})
    if missing:
        raise PairedError(f"no finished run of {', '.join(missing)} under {', '.join(map(str, run_dirs))} "
                          f"(rows found: {', '.join(sorted({c['name'] for c in cells}))})")
    scores = {row: _row_case_dice(cells, row) for row in sorted(rows)}
    comparisons = []
    for first, second in pairs:
        folds = tuple(fold for fold in scores[first] if fold in scores[second])
        if not folds:
            raise PairedError(f"{first} and {second} share no unseen client: {first} ran "
                              f"{', '.join(scores[first])}, {second} ran {', '.join(scores[second])}")
        keys = [(fold, case) for fold in folds for case in scores[first][fold] if case in scores[second][fold]]
        a = [scores[first][fold][case] for fold, case in keys]
        b = [scores[second][fold][case] for fold, case in keys]
        comparisons.append(PairedComparison(first, second, folds, len(keys), float(np.mean(a)), float(np.mean(b)),
                                            *paired_statistics(a, b)))
    return comparisons


def paired_table(comparisons: Sequence[PairedComparison]) -> str:
    """A Markdown table of ``comparisons``, Dice in %."""
    lines = ["| First | Second | unseen clients | cases | first Dice | second Dice | median difference | "
             "first higher | second higher | Wilcoxon p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        p_value = "–" if math.isnan(c.p_value) else f"{c.p_value:.3g}"
        lines.append(f"| {c.first} | {c.second} | {', '.join(c.folds)} | {c.cases} | {100 * c.first_mean:.2f} | "
                     f"{100 * c.second_mean:.2f} | {100 * c.median_difference:+.2f} | {c.first_higher} | "
                     f"{c.second_higher} | {p_value} |")
    return "\n".join(lines)
