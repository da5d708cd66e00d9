"""The data layer: from the files hospitals have to per-client training samples.

Raw sources --(:mod:`fedfms.data.prepare` converters, checked by :mod:`fedfms.data.validate`)-->
prepared client folders (:mod:`fedfms.data.manifest`, written atomically by
:mod:`fedfms.data.writer`) --(:mod:`fedfms.data.splits`)--> :class:`ClientDataset` items.

Importing this package does not import torch; :class:`ClientDataset` is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedfms.data.manifest import ClientManifest, ManifestError, SampleRecord, find_clients, read_manifest
from fedfms.data.splits import (
    FoldSplit,
    leave_one_client_out,
    load_split,
    save_split,
    train_val_split,
    validation_cases,
)
from fedfms.data.synthetic import make_synthetic_federation, write_raw_federation
from fedfms.data.validate import DataValidationError
from fedfms.data.writer import ClientExistsError, ClientWriter

if TYPE_CHECKING:
    from fedfms.data.dataset import ClientDataset

__all__ = [
    "ClientDataset",
    "ClientExistsError",
    "ClientManifest",
    "ClientWriter",
    "DataValidationError",
    "FoldSplit",
    "ManifestError",
    "SampleRecord",
    "find_clients",
    "leave_one_client_out",
    "load_split",
    "make_synthetic_federation",
    "read_manifest",
    "save_split",
    "train_val_split",
    "validation_cases",
    "write_raw_federation",
]


def __getattr__(name: str) -> Any:
    if name == "ClientDataset":
        from fedfms.data.dataset import ClientDataset

        return ClientDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
