"""Shared fixtures of the federation tests: a small synthetic federation and run configs."""

from pathlib import Path

import pytest

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig
from fedfms.data import make_synthetic_federation


@pytest.fixture
def federation(tmp_path) -> Path:
    """Three prepared sites (site-A, site-B, site-C) of 8 samples at 64 px, masks 16 px."""
    root = tmp_path / "data"
    make_synthetic_federation(root, num_clients=3, num_classes=1, image_size=64, mask_size=16,
                              samples_per_client=(8, 8, 8), seed=0)
    return root


def _run_config(root: Path, out: Path, rounds: int = 2, mode: str = "msa", **federation) -> RunConfig:
    return RunConfig(
        name="test", output_dir=out,
        model=ModelConfig(backbone="tiny", mode=mode, num_classes=1, image_size=64),
        data=DataConfig(root=root, unseen="site-C"),
        train=TrainConfig(batch_size=4, lr=1e-3),
        federation=FederationConfig(rounds=rounds, **federation),
    )


@pytest.fixture
def run_config():
    """Builds a tiny-SAM run config leaving ``site-C`` out: ``run_config(root, out, rounds=2,
    mode="msa", **federation)``; lr large enough that one step visibly moves the weights."""
    return _run_config
