"""Strict comparison and in-place copy of named tensors (state dicts), shared by every loader.

A load is strict: the incoming keys must equal the expected keys and every shape must agree,
otherwise :class:`CheckpointError` names the source (a file, or what was sent) and the keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping

import torch

from fedfms.errors import FedfmsError

_LISTED = 8


class CheckpointError(FedfmsError, ValueError):
    """Weights that do not fit the model: the message names the file and the offending keys."""


def _names(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LISTED])
    return shown if len(keys) <= _LISTED else f"{shown}, ... and {len(keys) - _LISTED} more"


def check_state(
    expected: Mapping[str, torch.Tensor],
    incoming: Mapping[str, torch.Tensor],
    source: str,
    optional: Collection[str] = (),
) -> None:
    """Raise :class:`CheckpointError` unless ``incoming`` has exactly the keys of ``expected``
    (keys in ``optional`` may be absent) with the same shapes."""
    missing = set(expected) - set(incoming) - set(optional)
    unexpected = set(incoming) - set(expected)
    mismatched = [
        f"{key}: {tuple(incoming[key].shape)} in {source}"
        f" vs {tuple(expected[key].shape)} in the model"
        for key in sorted(set(expected) & set(incoming))
        if incoming[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch ({len(mismatched)}): {'; '.join(mismatched[:_LISTED])}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match the model: " + "; ".join(problems))


def copy_state(targets: Mapping[str, torch.Tensor], incoming: Mapping[str, torch.Tensor]) -> None:
    """Copy every incoming tensor into the target tensor of the same name, in place."""
    with torch.no_grad():
        for key, value in incoming.items():
            targets[key].copy_(value)


def storage_aliases(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: first_name}`` for tensors that share storage with an earlier one (tied weights,
    e.g. SAM's positional-encoding matrix held by two modules)."""
    first: dict[tuple[int, torch.Size, torch.dtype], str] = {}
    aliases = {}
    for key, value in state.items():
        if value.device.type == "meta":
            continue
        ident = (
            value.untyped_storage().data_ptr() + value.storage_offset() * value.element_size(),
            value.shape,
            value.dtype,
        )
        if ident in first:
            aliases[key] = first[ident]
        else:
            first[ident] = key
    return aliases


def load_state_strict(
    module: torch.nn.Module, incoming: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load a full state dict into ``module`` strictly; tied tensors may be stored once."""
    targets = module.state_dict()
    aliases = storage_aliases(targets)
    check_state(targets, incoming, source, optional=aliases)
    copy_state(targets, incoming)
    missing_aliases = {
        alias: incoming[name] for alias, name in aliases.items() if alias not in incoming
    }
    copy_state(targets, missing_aliases)


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of named tensors (in name order): equal
    digests mean equal weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(state[name].shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
