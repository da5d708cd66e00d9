"""Segmentation models of fedfms: prompt-free multi-class SAM (modes ``sam``, ``msa``, ``lora``)
and the baselines, built by name, with strict loading of local weights and fedfms checkpoints.

Attributes are imported on first use, so that ``fedfms --help`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_model": "registry",
    "construct_model": "registry",
    "load_checkpoint": "registry",
    "trainable_state": "registry",
    "load_trainable_state": "registry",
    "save_checkpoint": "checkpoint",
    "read_checkpoint_config": "checkpoint",
    "CheckpointError": "state",
    "SamSegmenter": "sam",
    "count_parameters": "accounting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
