"""A matrix with ``seeds`` runs every cell once per seed, each seed in its own folder, and the
report gives the seeds' mean in its tables and each seed's score with the spread beside them."""

import json

import pytest
import yaml

from fedfms.config import ExperimentConfig
from fedfms.data import make_synthetic_federation
from fedfms.experiments.matrix import run_matrix
from fedfms.experiments.report import write_loco_report
from fedfms.run.log import read_rows


def _experiment(tmp_path, **fields):
    root = tmp_path / "data"
    if not root.exists():
        make_synthetic_federation(root, num_clients=2, num_classes=1, image_size=64, mask_size=64,
                                  samples_per_client=(4, 4), seed=3)
    return ExperimentConfig.model_validate({
        "name": "toy", "output_dir": tmp_path / "runs", "models": ["U-Net"], "unseen": ["site-B"],
        "base": {"model": {"num_classes": 1, "image_size": 64, "unet": {"channels": [4, 8]}},
                 "data": {"root": str(root)}, "train": {"batch_size": 4, "lr": 1e-2},
                 "federation": {"rounds": 1}}, **fields})


def _unseen_dice(run_dir):
    return json.loads((run_dir / "results.json").read_text())["clients"]["site-B"]["dice"]


def test_each_seed_runs_in_its_own_folder_and_the_report_gives_mean_and_spread(tmp_path):
    experiment = _experiment(tmp_path, seeds=[0, 5])
    first, other = run_matrix(experiment)
    assert first == tmp_path / "runs" / "U-Net" / "site-B"  # where a one-seed matrix puts it
    assert other == tmp_path / "runs" / "seed-5" / "U-Net" / "site-B"
    assert [yaml.safe_load((d / "config.yaml").read_text())["train"]["seed"] for d in (first, other)] == [0, 5]
    stamp = (other / "results.json").stat().st_mtime_ns
    assert run_matrix(experiment) == [first, other]  # finished seeds are reused
    assert (other / "results.json").stat().st_mtime_ns == stamp

    table = write_loco_report([tmp_path / "runs"], tmp_path / "report")
    dice = [_unseen_dice(first), _unseen_dice(other)]
    [row] = [line for line in table.splitlines() if line.startswith("| U-Net")]
    assert row.split(" | ")[1] == f"{100 * sum(dice) / 2:.2f}"  # one row, the seeds' mean
    seeds = (tmp_path / "report" / "seeds.md").read_text()
    assert f"| U-Net | site-B | 0, 5 | {100 * dice[0]:.2f}, {100 * dice[1]:.2f} |" in seeds
    assert "## Spread over seeds" in (tmp_path / "report" / "report.md").read_text()
    # one round: each run reached its own Dice in its first round; the cost is the runs' mean
    seconds = [next(r["seconds"] for r in read_rows(d) if r["kind"] == "round") for d in (first, other)]
    [cost] = [line for line in (tmp_path / "report" / "cost.md").read_text().splitlines() if line.startswith("| U-Net")]
    assert cost.split(" | ")[-1].rstrip(" |") == f"{sum(seconds) / 2:.0f}"


@pytest.mark.parametrize(("fields", "message"), [
    ({"seeds": [1, 1]}, "repeats a seed"),
    ({"seeds": []}, "at least 1"),
])
def test_bad_seeds_are_refused(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        _experiment(tmp_path, **fields)


def test_seeds_and_a_base_seed_are_refused_together(tmp_path):
    experiment = _experiment(tmp_path)
    with pytest.raises(ValueError, match="base.train.seed and seeds both set the seed"):
        ExperimentConfig.model_validate({**experiment.model_dump(), "seeds": [0, 1],
                                         "base": {**experiment.base, "train": {"seed": 2}}})
