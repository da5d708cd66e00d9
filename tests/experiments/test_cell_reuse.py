"""A matrix cell's folder answers only the question it was run with: changed settings are
refused by name, extended with ``resume`` or redone with ``rerun``; and an experiment's rows take
the backbone its base run names."""

import json

import pytest
import yaml

from fedfms.config import ExperimentConfig, save_config
from fedfms.data import make_synthetic_federation
from fedfms.experiments.matrix import StaleCellError, cell_changes, cell_config, run_matrix
from fedfms.run.log import read_rows


def _experiment(tmp_path, **train):
    root = tmp_path / "data"
    if not root.exists():
        make_synthetic_federation(root, num_clients=2, num_classes=1, image_size=64, mask_size=16,
                                  samples_per_client=(4, 4), seed=3)
    rounds = train.pop("rounds", 1)
    return ExperimentConfig(
        name="toy", output_dir=tmp_path / "runs", models=["MSA-PT"], unseen=["site-B"],
        backbones={"base": "tiny", "large": "tiny"},
        base={"model": {"num_classes": 1, "image_size": 64}, "data": {"root": str(root)},
              "train": {"batch_size": 4, "lr": 1e-3, **train}, "federation": {"rounds": rounds}})


def _rounds(cell):
    return [r["round"] for r in read_rows(cell) if r["kind"] == "round"]


def test_changed_settings_are_refused_by_name_extended_by_resume_or_rerun(tmp_path):
    [cell] = run_matrix(_experiment(tmp_path))
    stamp = (cell / "results.json").stat().st_mtime_ns
    assert run_matrix(_experiment(tmp_path)) == [cell]  # same settings: reused as it is
    assert (cell / "results.json").stat().st_mtime_ns == stamp

    with pytest.raises(StaleCellError, match=r"federation\.rounds 1 -> 2\. Use --resume to extend"):
        run_matrix(_experiment(tmp_path, rounds=2))
    assert json.loads((cell / "results.json").read_text())["rounds"] == 1  # nothing touched
    run_matrix(_experiment(tmp_path, rounds=2), resume=True)
    assert _rounds(cell) == [1, 2] and json.loads((cell / "results.json").read_text())["rounds"] == 2

    with pytest.raises(StaleCellError, match=r"train\.lr 0\.001 -> 0\.01\. Use another output folder, or --rerun"):
        run_matrix(_experiment(tmp_path, rounds=2, lr=1e-2), resume=True)  # resume extends rounds only
    with pytest.raises(StaleCellError, match="federation.rounds 2 -> 1"):
        run_matrix(_experiment(tmp_path, rounds=1), resume=True)  # rounds never shrink on resume
    run_matrix(_experiment(tmp_path, rounds=1, lr=1e-2), rerun=True)
    assert _rounds(cell) == [1]
    assert yaml.safe_load((cell / "config.yaml").read_text())["train"]["lr"] == 0.01


def test_rows_take_the_base_backbone_when_no_backbones_are_given(tmp_path):
    def experiment(**extra):
        return ExperimentConfig(name="lite", output_dir=tmp_path, models=["FedDecoder"],
                                base={"model": {"backbone": "litemedsam", "mode": "decoder"},
                                      "data": {"root": str(tmp_path)}}, **extra)

    pretrained = cell_config(experiment(), "FedDecoder", "site-A").model
    assert (pretrained.backbone, pretrained.uses_pretrained, pretrained.image_size) == ("litemedsam", True, 256)
    random_init = cell_config(experiment(), "FedDecoder-PT", "site-A").model
    assert (random_init.backbone, random_init.uses_pretrained) == ("litemedsam", False)
    with pytest.raises(ValueError, match=r"contradicts backbones\.base vit_b.*backbones: \{base: litemedsam"):
        experiment(backbones={"base": "vit_b", "large": "vit_l"})


def test_settings_of_a_baseline_a_row_is_not_leave_it_reusable_and_stale_the_baseline(tmp_path):
    [cell] = run_matrix(_experiment(tmp_path))
    stamp = (cell / "results.json").stat().st_mtime_ns
    changed = _experiment(tmp_path)
    changed.base["model"].update(nnunet={"iterations_per_round": 7}, unet={"res_units": 1})
    changed.base["train"] = {**changed.base.get("train", {}), "embedding_cache": str(tmp_path / "elsewhere")}
    assert run_matrix(changed) == [cell]  # a SAM row: nnU-Net's and U-Net's settings, a cache folder ask it nothing new
    assert (cell / "results.json").stat().st_mtime_ns == stamp

    for row in ("FednnU-Net", "FedU-Net"):  # as if each had run with the unchanged base
        stored = cell_config(_experiment(tmp_path), row, "site-B")
        stored.output_dir.mkdir(parents=True)
        save_config(stored, stored.output_dir / "config.yaml")
    assert cell_changes(cell_config(changed, "FednnU-Net", "site-B")) == ["model.nnunet.iterations_per_round 250 -> 7"]
    assert cell_changes(cell_config(changed, "FedU-Net", "site-B")) == ["model.unet.res_units 2 -> 1"]
