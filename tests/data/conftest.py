"""Fixtures of the data-layer tests; file-writing helpers live in ``data_helpers``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    """``../shared/data`` beside the checkout, or ``$FEDFMS_SHARED_DATA``."""
    env = os.environ.get("FEDFMS_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path} (set FEDFMS_SHARED_DATA to its folder)")
    return path
