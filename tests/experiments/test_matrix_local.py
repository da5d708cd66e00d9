"""The Local rows: one per training site, the centralized trainer on that site alone with the
federated rows' budget, scored on the unseen client and its own validation split; and their
place in the report."""

import json

import pytest

from fedfms.config import ConfigError, ExperimentConfig
from fedfms.data import make_synthetic_federation
from fedfms.experiments.matrix import cell_config, fold_rows, run_matrix
from fedfms.experiments.report import write_loco_report
from fedfms.run.log import read_rows


def _experiment(tmp_path, **update) -> ExperimentConfig:
    root = tmp_path / "data"
    make_synthetic_federation(root, num_clients=3, num_classes=1, image_size=32, mask_size=8,
                              samples_per_client=(6, 8, 6), seed=3)
    return ExperimentConfig(
        name="toy", output_dir=tmp_path / "runs", models=["MSA-PT", "Local"], unseen=["site-C"],
        backbones={"base": "tiny", "large": "tiny"}, local_model="MSA-PT",
        base={"model": {"num_classes": 1, "image_size": 32}, "data": {"root": str(root), "val_fraction": 0.25},
              "train": {"batch_size": 4, "lr": 1e-3, "local_epochs": 2}, "federation": {"rounds": 1}},
        **update,
    )


def test_local_rows_train_one_site_with_the_federated_budget_and_sit_beside_the_others(tmp_path):
    experiment = _experiment(tmp_path)
    assert fold_rows(experiment, "site-C") == ["MSA-PT", "Local-site-A", "Local-site-B"]
    cells = run_matrix(experiment)
    local = tmp_path / "runs" / "Local-site-B" / "site-C"
    assert cells[1:] == [tmp_path / "runs" / "Local-site-A" / "site-C", local]

    results = json.loads((local / "results.json").read_text())
    assert {c: s["split"] for c, s in results["clients"].items()} == {"site-B": "val", "site-C": "test"}
    trained = json.loads((local / "split.json").read_text())["train"]
    assert list(trained) == ["site-B"]
    # rounds x local epochs on site-B's training split alone: what site-B trains in a federated run
    epochs = [r for r in read_rows(local) if r["kind"] == "train"]
    assert len(epochs) == 1 * 2 and {(r["client"], r["samples"]) for r in epochs} == {("site-B", len(trained["site-B"]))}
    pooled = [r for r in read_rows(cells[0]) if r["kind"] == "train"]
    assert len(pooled) == len(epochs) and pooled[0]["samples"] > len(trained["site-B"])

    markdown = write_loco_report([tmp_path / "runs"], tmp_path / "report")
    assert [line.split(" | ")[0] for line in markdown.splitlines()[2:]] == ["| MSA-PT", "| Local-site-A", "| Local-site-B"]
    own = (tmp_path / "report" / "own_site.md").read_text().splitlines()
    assert own[0] == "| Model | site-A Dice | site-A IoU | site-B Dice | site-B IoU |"
    local_b = own[4].split(" | ")  # site-A never scored by the model of site-B alone; its own site is
    assert local_b[0] == "| Local-site-B" and local_b[1:3] == ["–", "–"] and local_b[3] != "–"
    assert f"{100 * results['clients']['site-B']['dice']:.2f}" == local_b[3]
    assert "own validation split" in (tmp_path / "report" / "report.md").read_text()


def test_a_local_row_needs_a_training_site_and_a_centralized_model(tmp_path):
    experiment = _experiment(tmp_path)
    with pytest.raises(ConfigError, match="Local-site-C needs a training site of fold 'site-C'"):
        cell_config(experiment, "Local-site-C", "site-C")
    with pytest.raises(ConfigError, match="local_model 'FedMSA-PT' must be a centralized row"):
        cell_config(experiment.model_copy(update={"local_model": "FedMSA-PT"}), "Local-site-A", "site-C")
