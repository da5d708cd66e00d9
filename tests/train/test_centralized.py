"""Centralized training: the same trainer on the pooled training splits, evaluated the same way."""

import pytest

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig
from fedfms.data import load_split, make_synthetic_federation
from fedfms.run.log import read_rows
from fedfms.run.tracker import RunTracker
from fedfms.train import centralized
from fedfms.train.centralized import train_centralized
from fedfms.train.sites import score_site


@pytest.fixture
def config(tmp_path):
    root = tmp_path / "data"
    make_synthetic_federation(root, num_clients=3, num_classes=2, image_size=64, mask_size=16,
                              samples_per_client=(8, 12, 8), seed=1)
    return RunConfig(output_dir=tmp_path / "run", data=DataConfig(root=root, unseen="site-B"),
                     model=ModelConfig(backbone="tiny", mode="sam", num_classes=2, image_size=64),
                     train=TrainConfig(batch_size=4, lr=1e-3), federation=FederationConfig(rounds=2))


def test_pooled_training_uses_only_the_training_splits_and_scores_every_client(config):
    results = train_centralized(config)
    split = load_split(config.output_dir / "split.json")
    rows = read_rows(config.output_dir)
    pooled = sum(len(ids) for ids in split.train.values())
    assert [r["samples"] for r in rows if r["kind"] == "train"] == [pooled, pooled]
    assert "site-B" not in split.train and len(split.test) == 12
    assert results["kind"] == "centralized" and results["clients"]["site-B"]["split"] == "test"
    assert len(results["clients"]["site-A"]["dice_per_class"]) == 2
    assert results["clients"]["site-B"]["images"] == 12


def test_centralized_resume_continues_to_more_rounds(config):
    train_centralized(config)
    longer = config.with_overrides({"federation.rounds": 3})
    results = train_centralized(longer, resume=True)
    assert [r["round"] for r in read_rows(config.output_dir) if r["kind"] == "round"] == [1, 2, 3]
    assert results["rounds"] == 3


@pytest.mark.parametrize("recipe", ["nnunet", "paper"])
def test_pooled_nnunet_with_overlapping_classes_trains_either_recipe(config, tmp_path, recipe):
    nnunet = {"recipe": recipe, "iterations_per_round": 2, "gpu_memory_gb": 0.05}
    config = config.model_copy(update={
        "model": ModelConfig(arch="nnunet", num_classes=2, image_size=64, nnunet=nnunet),
        "train": config.train.model_copy(update={"state_dir": tmp_path / "state"}),
        "federation": FederationConfig(rounds=1)})
    results = train_centralized(config)
    plan = results["model"]["nnunet"]["plan"]
    assert list(plan["dataset"]["labels"].values()) == [0, [1, 3], [2, 3]]  # regions: the classes may overlap
    split = load_split(config.output_dir / "split.json")
    pooled = sum(len(ids) for ids in split.train.values())
    assert plan["dataset"]["numTraining"] == pooled
    cases = list((tmp_path / "state" / "nnunet").glob("*/preprocessed/*/nnUNetPlans_2d/*.pkl"))
    assert len(cases) == (pooled if recipe == "nnunet" else 0)
    assert len(results["clients"]["site-B"]["dice_per_class"]) == 2


def test_final_scores_are_the_best_rounds_logged_evaluation_not_a_second_one(config, monkeypatch):
    scored = []

    def counting(model, site, run_config, model_cfg=None):
        scored.append(site.name)
        return score_site(model, site, run_config, model_cfg)

    monkeypatch.setattr(centralized, "score_site", counting)
    results = train_centralized(config)
    assert scored == ["site-A", "site-B", "site-C"] * 2  # rounds 1 and 2 only
    logged = {r["client"]: r["dice"] for r in read_rows(config.output_dir)
              if r["kind"] == "eval" and r["round"] == results["best_round"]}
    assert {c: s["dice"] for c, s in results["clients"].items()} == logged


def test_a_client_missing_from_the_best_rounds_log_alone_is_scored_again(config):
    train_centralized(config)
    tracker = RunTracker(config, config.output_dir, kind="centralized", resume=True)
    asked = []

    def evaluate(missing):
        asked.extend(missing)
        return [{"kind": "eval", "client": c, "dice": 0.5} for c in missing]

    rows = tracker.final_rows(["site-A", "site-Z", "site-B"], evaluate)
    assert asked == ["site-Z"] and [r["client"] for r in rows] == ["site-A", "site-Z", "site-B"]
    assert rows[0]["round"] == tracker.best_round


def test_case_protocol_scores_each_client_per_case_from_the_manifests_case_ids(config):
    """The loader carries each slice's case id to the scorer: the unseen site's 12 slices are
    scored as its cases, the training sites' validation slices as theirs."""
    from fedfms.data import read_manifest

    results = train_centralized(config.with_overrides({"evaluation.protocol": "case", "federation.rounds": 1}))
    unseen = results["clients"]["site-B"]
    cases = {s.case_id for s in read_manifest(config.data.root / "site-B").samples}
    assert unseen["images"] == 12 and unseen["cases"] == len(cases) and 1 < len(cases) < 12
    assert 0.0 <= unseen["dice"] <= 1.0
