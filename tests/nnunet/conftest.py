"""Fixtures of the nnU-Net tests."""

from __future__ import annotations

import numpy as np
import pytest
from nnunet_cases import synthetic_cases


@pytest.fixture
def cases() -> list[tuple[np.ndarray, np.ndarray]]:
    return synthetic_cases(6)
