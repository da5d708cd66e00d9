"""The experiment matrix (model row x unseen client) with skip/resume, and its report."""

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from fedfms.cli import app
from fedfms.config import ConfigError, ExperimentConfig
from fedfms.data import make_synthetic_federation
from fedfms.experiments.matrix import cell_config, run_matrix
from fedfms.experiments.report import loco_table, write_loco_report
from fedfms.run.log import read_rows

pytestmark = pytest.mark.slow


def _experiment(tmp_path, unseen):
    root = tmp_path / "data"
    if not root.exists():
        make_synthetic_federation(root, num_clients=3, num_classes=1, image_size=64, mask_size=16,
                                  samples_per_client=(8, 8, 8), seed=2)
    return ExperimentConfig(
        name="toy", output_dir=tmp_path / "runs", models=["FedMSA-PT", "MSA-PT"], unseen=unseen,
        backbones={"base": "tiny", "large": "tiny"}, paper="prostate",
        base={"model": {"num_classes": 1, "image_size": 64}, "data": {"root": str(root)},
              "train": {"batch_size": 4, "lr": 1e-3}, "federation": {"rounds": 2}},
    )


def test_matrix_skips_finished_cells_resumes_interrupted_ones_and_reports(tmp_path):
    first = run_matrix(_experiment(tmp_path, ["site-A"]))  # as if the matrix had stopped after fold 1
    finished = first[0] / "results.json"
    stamp = finished.stat().st_mtime
    interrupted = first[1]
    (interrupted / "results.json").unlink()  # killed after its last checkpoint, before the final test

    cells = run_matrix(_experiment(tmp_path, ["site-A", "site-C"]))
    assert [c.relative_to(tmp_path / "runs").as_posix() for c in cells] == [
        "FedMSA-PT/site-A", "MSA-PT/site-A", "FedMSA-PT/site-C", "MSA-PT/site-C"]
    assert all((c / "results.json").exists() for c in cells)
    assert finished.stat().st_mtime == stamp
    assert [r["round"] for r in read_rows(interrupted) if r["kind"] == "round"] == [1, 2]

    markdown = write_loco_report([tmp_path / "runs"], tmp_path / "report", paper="prostate")
    lines = markdown.splitlines()
    assert lines[0] == ("| Model | site-A Dice | site-A IoU | site-C Dice | site-C IoU | Average Dice | Average IoU |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| FedMSA-PT", "| MSA-PT"]  # no prostate client here
    for png in ("unseen_dice_per_round.png", "client_bars.png"):
        with Image.open(tmp_path / "report" / png) as image:
            assert image.size[0] > 300


def test_pretrained_rows_need_weights_and_baselines_take_their_own_size(tmp_path):
    experiment = _experiment(tmp_path, ["site-A"]).model_copy(update={"baseline_image_size": 32})
    with pytest.raises(ConfigError, match="weights.tiny.*FedMSA-PT"):
        cell_config(experiment, "FedMSA", "site-A")
    unet = cell_config(experiment, "FednnU-Net", "site-A")
    assert unet.model.arch == "nnunet" and unet.model.image_size == 32 and unet.data.unseen == "site-A"
    with pytest.raises(ConfigError, match="unknown model row"):
        cell_config(experiment, "FedGPT", "site-A")


def test_multi_class_table_has_a_column_per_class(tmp_path):
    cells = [{"name": "FedSAM", "unseen": "REFUGE", "class_names": ["disc", "cup"],
              "clients": {"REFUGE": {"dice_per_class": [0.9, 0.8], "iou_per_class": [0.85, 0.7]}}}]
    header, rows = loco_table(cells, paper="fundus")
    assert header[1:5] == ["REFUGE disc Dice", "REFUGE disc IoU", "REFUGE cup Dice", "REFUGE cup IoU"]
    assert rows[0][1:5] == ["90.00", "85.00", "80.00", "70.00"]
    assert rows[1][0] == "FedSAM (paper)" and rows[1][1:5] == ["86.90", "77.20", "87.30", "78.10"]
    rim = [{**cells[0], "class_names": ["rim", "cup"]}]  # the reference's disc channel is the rim
    assert loco_table(rim, paper="fundus")[1][1][1:5] == ["86.90", "77.20", "87.30", "78.10"]


def test_rows_option_runs_only_the_rows_named_and_refuses_a_row_the_config_lacks(tmp_path):
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(_experiment(tmp_path, ["site-A"]).model_dump(mode="json")))

    refused = CliRunner().invoke(app, ["experiment", "--config", str(config), "--rows", "LoRA"])
    assert isinstance(refused.exception, ConfigError)  # fedfms.cli.main prints it as one line, exit 1
    assert "LoRA not among the configuration's models (FedMSA-PT, MSA-PT)" in str(refused.exception)
    assert not (tmp_path / "runs").exists()

    ran = CliRunner().invoke(app, ["experiment", "--config", str(config), "--rows", "MSA-PT"])
    assert ran.exit_code == 0, ran.output
    assert (tmp_path / "runs" / "MSA-PT" / "site-A" / "results.json").exists()
    assert not (tmp_path / "runs" / "FedMSA-PT").exists()
    assert "| MSA-PT |" in (tmp_path / "runs" / "report" / "table.md").read_text()
