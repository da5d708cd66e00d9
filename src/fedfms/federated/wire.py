"""What travels: the trainable tensors of the model as a Flower ``ArrayRecord``, how a client's
update is encoded for the trip back, and the checks it must pass before it is aggregated.

Update encodings (``federation.update_encoding``):

- ``full``: the client's trainable tensors in float32, as FedAvg is usually run;
- ``delta-fp16``: ``local - global`` in float16, half the bytes. Fine-tuning moves weights by
  far less than their magnitude, so the difference keeps float16's 11 significant bits where
  the weights themselves would lose the update; the server adds it back to the global float32
  tensors before aggregating, so the strategies see ordinary weights.

On the wire the records travel packed (:mod:`fedfms.federated.packing`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedfms.errors import FedfmsError


class UpdateRejected(FedfmsError, ValueError):
    """A client's update cannot be aggregated; the message says which tensor and why."""


def to_record(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> ArrayRecord:
    """Trainable tensors (name -> tensor) as an ArrayRecord (numpy arrays of ``dtype``, CPU)."""
    return ArrayRecord.from_torch_state_dict({k: v.detach().to("cpu", dtype) for k, v in state.items()})


def encode_update(local: dict[str, torch.Tensor], start: dict[str, torch.Tensor], encoding: str) -> ArrayRecord:
    """A client's update for the server: its tensors (``full``) or ``local - start`` in float16."""
    if encoding == "delta-fp16":
        return to_record({k: local[k].detach().cpu().float() - start[k] for k in local}, torch.float16)
    return to_record(local)


def decode_update(update: ArrayRecord, global_record: ArrayRecord, encoding: str) -> ArrayRecord:
    """The client's float32 tensors from its encoded update and the global tensors it started from."""
    if encoding == "delta-fp16":
        return to_record({k: torch.from_numpy(global_record[k].numpy() + update[k].numpy().astype(np.float32))
                          for k in global_record.keys()})
    return update


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


def update_distance(update: ArrayRecord, global_record: ArrayRecord) -> float:
    """L2 norm of ``update - global`` over every tensor (float64): how far a client moved."""
    total = sum(float(np.sum((update[k].numpy().astype(np.float64) - global_record[k].numpy()) ** 2))
                for k in global_record.keys())
    return math.sqrt(total)
