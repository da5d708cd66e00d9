"""What a node decides for itself: its node config over the run's node-local settings, and a
model of its own for every message."""

from pathlib import Path

import pytest
import torch
from flwr.app import Context, RecordDict

from fedfms.config import ConfigError, ModelConfig, RunConfig
from fedfms.federated.site import NODE_SETTINGS, node_run_config, site_model


def _context(**node_config) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})


def _server_config(tmp_path: Path) -> RunConfig:
    return RunConfig.model_validate({
        "name": "t", "output_dir": str(tmp_path / "run"), "data": {"root": str(tmp_path / "data")},
        "train": {"device": "cpu", "precision": "fp32", "num_workers": 0,
                  "embedding_cache": str(tmp_path / "server-cache"), "state_dir": str(tmp_path / "server-state")},
    })


def test_node_settings_replace_the_servers_values_on_that_node_only(tmp_path):
    server = _server_config(tmp_path)
    node = _context(**{"data-dir": "/x", "device": "cuda:1", "precision": "bf16", "num-workers": 4,
                       "embedding-cache": "/node/cache", "state-dir": "/node/state"})
    train = node_run_config(node, server).train
    assert (train.device, train.precision, train.num_workers) == ("cuda:1", "bf16", 4)
    assert (train.embedding_cache, train.state_dir) == (Path("/node/cache"), Path("/node/state"))
    assert node_run_config(node, server).model == server.model  # nothing that shapes the model or what travels
    assert set(NODE_SETTINGS.values()) <= {f"train.{k}" for k in type(train).model_fields}


def test_without_node_settings_the_servers_values_are_the_defaults(tmp_path):
    server = _server_config(tmp_path)
    assert node_run_config(_context(**{"data-dir": "/x", "precision": "bf16"}), server).train == \
        server.train.model_copy(update={"precision": "bf16"})
    assert node_run_config(_context(**{"data-dir": "/x"}), server) == server


def test_a_wrong_node_setting_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="train.precision"):
        node_run_config(_context(precision="fp8"), _server_config(tmp_path))
    with pytest.raises(ConfigError, match="train.num_workers"):
        node_run_config(_context(**{"num-workers": -1}), _server_config(tmp_path))


def test_each_message_gets_its_own_copy_of_the_node_model():
    cfg = ModelConfig(backbone="tiny", mode="msa", image_size=64)
    first = site_model(cfg, seed=3)
    with torch.no_grad():
        for p in first.parameters():
            p.add_(1.0)
    second = site_model(cfg, seed=3)
    assert second is not first
    expected = site_model(cfg, seed=3).state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in second.state_dict().items())
    assert not torch.equal(first.head.weight, second.head.weight)  # what one message did stays with it
