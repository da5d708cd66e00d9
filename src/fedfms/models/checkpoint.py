"""fedfms checkpoints: a folder with ``model.safetensors`` (the full state dict) and
``fedfms_model.json`` (the :class:`ModelConfig` fields, plus ``"metadata"``: ``{str: str}``,
and ``"sha256"``: the digest of ``model.safetensors``, checked on every load; a damaged file is
refused naming it. Checkpoints written before digests were stored load with a warning).

The JSON is enough to rebuild the same model (see :func:`fedfms.models.load_checkpoint`).
Writing is atomic: files go to a temporary folder beside the target, which then takes the
target's name; an existing checkpoint is moved away only once the new one is complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fedfms.config import ModelConfig
from fedfms.io import sha256_of
from fedfms.models.state import CheckpointError, load_state_strict, storage_aliases

CONFIG_FILE = "fedfms_model.json"
STATE_FILE = "model.safetensors"
DIGESTS = "sha256"
logger = logging.getLogger("fedfms")


def save_checkpoint(
    directory: Path, model: nn.Module, cfg: ModelConfig, metadata: dict[str, str] | None = None
) -> None:
    """Write ``model``'s state dict and ``cfg`` (+ ``metadata``) as a checkpoint folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    aliases = storage_aliases(state)
    tensors = {k: v.detach().contiguous() for k, v in state.items() if k not in aliases}
    description = cfg.model_dump(mode="json") | {"metadata": dict(metadata or {})}
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_file(tensors, staging / STATE_FILE)
        description[DIGESTS] = {STATE_FILE: sha256_of(staging / STATE_FILE)}
        (staging / CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n")
        if directory.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, retired / directory.name)
            os.replace(staging, directory)
            shutil.rmtree(retired)
        else:
            os.replace(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file, with the file named in any error."""
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read safetensors file: {err}") from err


def _read_description(directory: Path) -> tuple[ModelConfig, dict[str, str], dict[str, str]]:
    """A checkpoint folder's model configuration, metadata and file digests."""
    path = Path(directory) / CONFIG_FILE
    try:
        description = json.loads(path.read_text())
        metadata = description.pop("metadata", {})
        digests = description.pop(DIGESTS, {})
        return ModelConfig.model_validate(description), metadata, digests
    except (OSError, json.JSONDecodeError, AttributeError, ValidationError) as err:
        raise CheckpointError(f"{path}: not a readable fedfms model description: {err}") from err


def read_checkpoint_config(directory: Path) -> tuple[ModelConfig, dict[str, str]]:
    """The model configuration and metadata stored in a checkpoint folder."""
    cfg, metadata, _ = _read_description(directory)
    return cfg, metadata


def load_checkpoint_state(model: nn.Module, directory: Path, cfg: ModelConfig) -> None:
    """Load a checkpoint's tensors into ``model`` (built from ``cfg``), strictly, once their
    file matches its stored digest.

    Every configuration field but ``checkpoint`` must equal the stored one; otherwise the
    error lists the differences (e.g. ``backbone: vit_l in the checkpoint, vit_b asked``).
    """
    directory = Path(directory)
    stored, _, digests = _read_description(directory)
    differences = [
        f"{field}: {getattr(stored, field)!r} in the checkpoint, {getattr(cfg, field)!r} asked"
        for field in ModelConfig.model_fields
        if field != "checkpoint" and getattr(stored, field) != getattr(cfg, field)
    ]
    if differences:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: checkpoint was saved for another model: "
            + "; ".join(differences)
        )
    path = directory / STATE_FILE
    if STATE_FILE not in digests:
        logger.warning("%s: no SHA-256 digest in %s (written before fedfms stored them): its integrity is not "
                       "checked", path, CONFIG_FILE)
    elif path.is_file() and sha256_of(path) != digests[STATE_FILE]:
        raise CheckpointError(f"{path}: the file is damaged: its SHA-256 differs from the digest stored in "
                              f"{CONFIG_FILE} when it was written")
    load_state_strict(model, read_safetensors(path), str(path))
