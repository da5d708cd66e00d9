"""Fixtures shared by all tests: the real data sets in ``../shared/data``, Flower's task identity,
a small synthetic federation and tiny-SAM run configs."""

from __future__ import annotations

import os
from pathlib import Path


def _share_the_cores() -> None:
    """Under pytest-xdist, each worker and every process it starts (a run, Ray's actors, a
    site worker) gets its share of the cores, not all of them: torch's default, every core in
    every worker, oversubscribes the CPU, and OpenMP's waiting threads then slowed CPU-bound
    test files by a quarter (2 cores, 2 workers). Set before torch is imported; a value the
    user set is kept."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")  # set in xdist's workers only
    if workers:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(workers))))


_share_the_cores()

import pytest  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig  # noqa: E402
from fedfms.data import make_synthetic_federation  # noqa: E402


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$FEDFMS_SHARED_DATA``."""
    env = os.environ.get("FEDFMS_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        message = f"real test data not found at {path} (set FEDFMS_SHARED_DATA to its folder)"
        if os.environ.get("FEDFMS_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def task_identity():
    """Flower stamps messages with the identity of the running task, which its runtime sets for
    each app process; tests that play an app's part without a runtime set it here."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


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
