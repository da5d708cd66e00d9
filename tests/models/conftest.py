"""Fixtures of the model tests: tiny SAM configurations and images."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fedfms.config import ModelConfig


@pytest.fixture
def tiny_cfg() -> Callable[..., ModelConfig]:
    """``tiny_cfg(mode="msa", image_size=64, ...)``: a tiny SAM configuration."""

    def make(**fields: object) -> ModelConfig:
        return ModelConfig(**({"backbone": "tiny", "image_size": 64, "mode": "sam"} | fields))

    return make


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """Two random 64x64 RGB images in [0, 1]: ``(2, 3, 64, 64)``."""
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
