"""``fedfms paired``: two rows' best models scored again patient by patient on their unseen
client, each patient's Dice the mean over a row's seeds, and the pairs through the Wilcoxon
signed-rank test."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from fedfms.cli import app
from fedfms.config import DataConfig, EvaluationConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig
from fedfms.data import make_synthetic_federation
from fedfms.experiments.paired import CASE_SCORES, PairedError, case_dice, compare_rows, paired_statistics, paired_table
from fedfms.train.centralized import train_centralized


def test_paired_statistics_count_wins_and_give_the_exact_signed_rank_p_value():
    first = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    second = [0.1, 0.2, 0.3, 0.4, 0.45, 0.5]
    median, first_higher, second_higher, p_value = paired_statistics(first, second)
    assert median == pytest.approx(0.3) and (first_higher, second_higher) == (5, 1)
    # the signed ranks: five positive (6, 5, 4, 3, 1), one negative (2); exact two-sided p over
    # all 2^6 sign patterns with a negative rank sum of at most 2: {}, {1}, {2} -> 2 * 3 / 64
    assert p_value == pytest.approx(6 / 64)
    assert math.isnan(paired_statistics([0.5, 0.7], [0.5, 0.7])[3])  # every pair ties


@pytest.fixture(scope="module")
def two_rows(tmp_path_factory):
    """Centralized runs of two rows leaving site-C (3 patients of 4 slices) out: row A (tiny
    SAM, MSA) with seeds 0 and 1, the second in seed-1/ as a matrix puts it; row B (all of the
    tiny SAM) with seed 0."""
    tmp = tmp_path_factory.mktemp("paired")
    data = tmp / "data"
    make_synthetic_federation(data, num_clients=3, num_classes=1, image_size=64, mask_size=16,
                              samples_per_client=(8, 8, 12), seed=0)
    root = tmp / "runs"
    cells = {("RowA", 0): root / "RowA" / "site-C", ("RowA", 1): root / "seed-1" / "RowA" / "site-C",
             ("RowB", 0): root / "RowB" / "site-C"}
    for (row, seed), out in cells.items():
        train_centralized(RunConfig(
            name=row, output_dir=out,
            model=ModelConfig(backbone="tiny", mode="msa" if row == "RowA" else "sam", num_classes=1, image_size=64),
            data=DataConfig(root=data, unseen="site-C"),
            train=TrainConfig(batch_size=4, lr=1e-3, seed=seed),
            federation=FederationConfig(rounds=1),
            evaluation=EvaluationConfig(protocol="case"),
        ))
    return root, {key: json.loads((out / "results.json").read_text()) for key, out in cells.items()}


def test_rows_are_compared_on_the_unseen_patients_with_seeds_averaged(two_rows):
    root, results = two_rows
    (comparison,) = compare_rows([root], [("RowA", "RowB")])
    assert comparison.folds == ("site-C",) and comparison.cases == results[("RowB", 0)]["clients"]["site-C"]["cases"] == 3
    # scored again from the best models, the per-patient means reproduce each run's unseen Dice
    row_a = [results[("RowA", seed)]["clients"]["site-C"]["dice"] for seed in (0, 1)]
    assert comparison.first_mean == pytest.approx(sum(row_a) / 2, abs=1e-6)
    assert comparison.second_mean == pytest.approx(results[("RowB", 0)]["clients"]["site-C"]["dice"], abs=1e-6)
    assert comparison.first_higher + comparison.second_higher <= 3
    assert math.isnan(comparison.p_value) or 0 < comparison.p_value <= 1
    table = paired_table([comparison])
    assert "| RowA | RowB | site-C | 3 |" in table and f"{100 * comparison.first_mean:.2f}" in table


def test_per_case_scores_are_kept_in_the_run_and_rescored_when_their_key_changes(two_rows):
    root, _ = two_rows
    run = root / "RowB" / "site-C"
    scored = case_dice(run)
    kept = json.loads((run / CASE_SCORES).read_text())
    assert kept["client"] == "site-C" and kept["dice"] == pytest.approx(scored) and len(kept["dice"]) == 3
    # a second table reads the kept scores instead of scoring again ...
    case = next(iter(scored))
    (run / CASE_SCORES).write_text(json.dumps(kept | {"dice": kept["dice"] | {case: 0.123}}))
    assert case_dice(run)[case] == 0.123
    # ... and scores again where the model, configuration or data they were kept for changed
    (run / CASE_SCORES).write_text(json.dumps(kept | {"key": "another model", "dice": {case: 0.123}}))
    assert case_dice(run) == pytest.approx(scored)
    assert json.loads((run / CASE_SCORES).read_text())["key"] == kept["key"]


def test_a_row_without_runs_and_a_bad_pair_are_refused_by_name(two_rows):
    root, _ = two_rows
    with pytest.raises(PairedError, match="no finished run of RowZ .*rows found: RowA, RowB"):
        compare_rows([root], [("RowA", "RowZ")])
    result = CliRunner().invoke(app, ["paired", str(root), "--pair", "RowA-RowB"])
    assert result.exit_code == 2 and "FIRST:SECOND" in result.output


def test_the_command_prints_and_writes_the_table(two_rows, tmp_path):
    root, _ = two_rows
    result = CliRunner().invoke(app, ["paired", str(root), "--pair", "RowB:RowA", "--out", str(tmp_path / "paired.md")])
    assert result.exit_code == 0, result.output
    assert "| RowB | RowA | site-C | 3 |" in result.output
    assert (tmp_path / "paired.md").read_text() == result.stdout
