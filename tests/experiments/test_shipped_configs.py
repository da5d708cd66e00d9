"""Every configuration in configs/ loads, and the paper's matrices build every cell."""

from pathlib import Path

import pytest

from fedfms.config import ConfigError, RunConfig, load_config, load_experiment
from fedfms.experiments.matrix import cell_config, fold_rows, folds
from fedfms.experiments.report import paper_table1

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER_MATRICES = ("prostate", "brain_tumour", "fundus", "nuclei")


@pytest.mark.parametrize("name", PAPER_MATRICES)
def test_paper_matrix_has_every_table1_model_and_client(name):
    experiment = load_experiment(CONFIGS / f"{name}.yaml")
    reported = paper_table1()[name]
    assert set(experiment.models) == set(reported)
    paper_clients = set(next(iter(reported.values()))) - {"Average"}
    assert set(folds(experiment)) == paper_clients
    cells = [cell_config(experiment, m, u) for u in folds(experiment) for m in experiment.models]
    assert {c.model.backbone for c in cells if c.model.arch == "sam"} == {"vit_b", "vit_l"}
    assert all(c.train.batch_size == 6 and c.train.lr == 1e-4 and c.federation.rounds == 100 for c in cells)
    sam = [c for c in cells if c.model.arch == "sam"]  # the reference code's choices, by name
    assert all(c.model.prompt == "bare" and c.model.input_norm == "unit" for c in sam)
    assert all(c.model.head == ("conv" if name == "fundus" else "token0") for c in sam)
    assert all(c.train.optimizer_state == "keep" and c.train.precision == "fp32" for c in cells)
    volumes = name in ("prostate", "brain_tumour")
    assert all(c.data.val_count == ("floor_plus_one" if volumes else "floor") for c in cells)


@pytest.mark.parametrize("name", ["demo", "prostate_fedmsa"])
def test_run_configs_load(name):
    assert load_config(CONFIGS / f"{name}.yaml").name


def test_a_typo_in_a_config_is_an_error_naming_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {root: x}\ntrain: {batch_sise: 4}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: train.batch_sise: Extra inputs"):
        load_config(path)


def _fold_cells(name: str) -> dict[str, RunConfig]:
    experiment = load_experiment(CONFIGS / f"{name}.yaml")
    unseen = folds(experiment)[0]
    return {m: cell_config(experiment, m, unseen) for m in fold_rows(experiment, unseen)}


@pytest.mark.parametrize("name", ["nuclei_litemedsam", "brain_lgg_litemedsam"])
def test_decoder_matrices_build_pretrained_and_random_cells(name):
    cells = _fold_cells(name)
    sam = {m: c for m, c in cells.items() if c.model.arch == "sam"}
    assert all(c.model.backbone == "litemedsam" and c.model.image_size == 256 for c in sam.values())
    assert all(c.model.uses_pretrained == (not m.endswith("-PT")) for m, c in sam.items())
    assert {c.model.mode for c in sam.values()} == {"decoder"}
    baselines = {m: c.model.arch for m, c in cells.items() if m not in sam}
    assert baselines == {"FedU-Net": "unet"}  # from scratch, at the same size
    assert all(cells[m].model.image_size == 256 for m in baselines)


ENCODER_MODES = {"FedSAM": "sam", "SAM": "sam", "FedMSA": "msa", "MSA": "msa", "FedMSA-PT": "msa",
                 "FedLoRA": "lora", "LoRA": "lora"}


@pytest.mark.parametrize(("fold", "matrix"), [("nuclei_litemedsam_prostate_fold", "nuclei_litemedsam"),
                                              ("brain_lgg_litemedsam_fg_fold", "brain_lgg_litemedsam")])
def test_encoder_folds_train_each_adapter_on_the_budget_of_their_dataset(fold, matrix):
    cells = _fold_cells(fold)
    assert {m: cells[m].model.mode for m in ENCODER_MODES} == ENCODER_MODES
    assert all(cells[m].model.uses_pretrained == (not m.endswith("-PT")) for m in ENCODER_MODES)
    assert cells["FednnU-Net"].model.arch == "nnunet" and cells["FednnU-Net"].federation.rounds > 1
    budgets = {(c.federation.rounds, c.train.local_epochs) for c in [*cells.values(), *_fold_cells(matrix).values()]}
    assert len(budgets) == 1  # the same rounds and local epochs for every row of a dataset


@pytest.mark.parametrize(("name", "sites"), [("nuclei_litemedsam", ["breast", "kidney", "liver", "prostate"]),
                                             ("brain_lgg_litemedsam", ["DU", "HT", "FG"])])
def test_decoder_matrices_have_a_local_row_per_training_site_in_every_fold(name, sites):
    experiment = load_experiment(CONFIGS / f"{name}.yaml")
    assert sorted(folds(experiment)) == sorted(sites)
    for unseen in folds(experiment):
        local = [m for m in fold_rows(experiment, unseen) if m.startswith("Local-")]
        assert local == [f"Local-{s}" for s in sites if s != unseen]
        assert all(cell_config(experiment, m, unseen).data.clients == [m[len("Local-"):], unseen] for m in local)
