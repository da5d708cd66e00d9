"""Fixtures shared by all tests: the real data sets in ``../shared/data``, Flower's task identity."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.supercore.task_identity import TaskIdentity


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
