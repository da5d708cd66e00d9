"""A mistyped unseen client is one line listing the clients found, with near matches, before
any run folder is made."""

import sys

import pytest

from fedfms.cli import main
from fedfms.config import DataConfig, ModelConfig, RunConfig
from fedfms.data import make_synthetic_federation
from fedfms.federated.simulation import simulate
from fedfms.train.sites import SiteError


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    make_synthetic_federation(root, num_clients=2, num_classes=1, image_size=64, mask_size=16,
                              samples_per_client=(2, 2), seed=0)
    return root


def test_a_case_typo_in_unseen_is_one_line_naming_the_client_meant(data, tmp_path, monkeypatch, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\ndata: {{root: {data}}}\nmodel: {{backbone: tiny, image_size: 64}}\n")
    monkeypatch.setattr(sys, "argv", ["fedfms", "train", "-c", str(config), "--centralized", "--set", "data.unseen=SITE-b"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    assert capsys.readouterr().err == (f"error: data.unseen 'SITE-b' is not one of the clients in {data}: "
                                       "site-A, site-B; did you mean 'site-B'?\n")
    assert not (tmp_path / "run").exists()


def test_a_federated_run_refuses_an_unknown_unseen_before_making_its_folder(data, tmp_path):
    config = RunConfig(output_dir=tmp_path / "run", data=DataConfig(root=data, unseen="zzz"),
                       model=ModelConfig(backbone="tiny", image_size=64))
    with pytest.raises(SiteError, match=r"'zzz' is not one of the clients in .*: site-A, site-B$"):
        simulate(config)
    assert not (tmp_path / "run").exists()
