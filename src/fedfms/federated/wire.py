"""What travels: the trainable tensors of the model as a Flower ``ArrayRecord``, and the
checks an incoming update must pass before it is aggregated."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedfms.errors import FedfmsError


class UpdateRejected(FedfmsError, ValueError):
    """A client's update cannot be aggregated; the message says which tensor and why."""


def to_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """Trainable tensors (name -> tensor) as an ArrayRecord (float32 numpy arrays, CPU)."""
    return ArrayRecord.from_torch_state_dict({k: v.detach().float().cpu() for k, v in state.items()})


def from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """ArrayRecord -> name -> tensor (a copy the caller may keep)."""
    return {k: torch.from_numpy(np.array(v.numpy(), copy=True)) for k, v in record.items()}


def record_shapes(record: ArrayRecord) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every array of a record."""
    return {k: tuple(v.shape) for k, v in record.items()}


def check_update(update: ArrayRecord, expected: dict[str, tuple[int, ...]]) -> None:
    """Refuse an update whose names or shapes differ from the global model's, or with NaN/Inf.

    Raises :class:`UpdateRejected` naming the offending tensor.
    """
    missing = sorted(set(expected) - set(update.keys()))
    unexpected = sorted(set(update.keys()) - set(expected))
    if missing or unexpected:
        raise UpdateRejected(f"tensor names differ from the global model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    for name, array in update.items():
        if tuple(array.shape) != expected[name]:
            raise UpdateRejected(f"tensor {name!r} has shape {tuple(array.shape)}, expected {expected[name]}")
        values = array.numpy()
        if not np.isfinite(values).all():
            raise UpdateRejected(f"tensor {name!r} contains NaN or Inf")
