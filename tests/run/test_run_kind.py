"""A run folder holding a federated run is not continued by a centralized one (nor the other
way): the refusal says it is a different kind of run, not "--resume"."""

import pytest
import torch

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig
from fedfms.data import make_synthetic_federation
from fedfms.run.state import ResumeError, RoundState, save_round
from fedfms.run.tracker import RunTracker
from fedfms.train.centralized import train_centralized


@pytest.fixture
def config(tmp_path):
    make_synthetic_federation(tmp_path / "data", num_clients=2, num_classes=1, image_size=64, mask_size=16,
                              samples_per_client=(2, 2), seed=0)
    return RunConfig(output_dir=tmp_path / "run", data=DataConfig(root=tmp_path / "data", unseen="site-B"),
                     model=ModelConfig(backbone="tiny", image_size=64), federation=FederationConfig(rounds=2))


@pytest.mark.parametrize("resume", [False, True])
def test_a_centralized_run_refuses_a_folder_holding_a_federated_run(config, resume):
    save_round(config.output_dir, {"w": torch.zeros(2)}, {}, RoundState(round=1, config=config.model_dump(mode="json"),
                                                                        kind="federated"), is_best=True)
    with pytest.raises(ResumeError, match="holds a federated run; this is a centralized run, a different kind") as err:
        train_centralized(config, resume=resume)
    assert "--resume" not in str(err.value)


def test_the_kind_is_recorded_with_each_round(config):
    tracker = RunTracker(config, config.output_dir, kind="centralized")
    tracker.end_round(1, {"w": torch.zeros(2)}, {}, [{"kind": "train", "round": 1, "client": "pooled", "loss": 1.0}],
                      0.1, [])
    with pytest.raises(ResumeError, match="holds a centralized run; this is a federated run"):
        RunTracker(config, config.output_dir, kind="federated", resume=True)
    assert RunTracker(config, config.output_dir, kind="centralized", resume=True).first_round == 2
