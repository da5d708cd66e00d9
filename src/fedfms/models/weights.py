"""Pretrained SAM weights from local files into a :class:`SamSegmenter`, strictly, no network.

Formats (detected by :func:`detect_format`):

* ``meta``: one ``.pth`` file in Meta's format (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``,
  ``sam_vit_h_4b8939.pth``, MedSAM's ``medsam_vit_b.pth``): read with
  ``torch.load(weights_only=True)``, names mapped by :mod:`fedfms.models.keymap`;
* ``transformers``: a folder with ``config.json`` and ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``), e.g. a local copy of ``facebook/sam-vit-base``;
* ``fedfms``: a folder with ``fedfms_model.json`` (see :mod:`fedfms.models.checkpoint`).

Every tensor of the foundation model (the ``SamModel`` inside the segmenter) must come from the
file and every tensor of the file must be used, else :class:`CheckpointError` lists the missing
and unexpected names in the file's own naming. The class head is new and keeps its fresh
initialisation; adapters and LoRA are added after the weights are loaded. Position embeddings are resized to the model's input size.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

import torch

from fedfms.models.checkpoint import CONFIG_FILE, read_safetensors
from fedfms.models.keymap import add_tied_aliases, meta_to_transformers, transformers_to_meta
from fedfms.models.posembed import resize_position_embeddings
from fedfms.models.sam import PRESETS, SamSegmenter, preset_name
from fedfms.models.state import CheckpointError, check_state, copy_state

WeightFormat = Literal["meta", "transformers", "fedfms"]
_LAYER_KEY = re.compile(r"vision_encoder\.layers\.(\d+)\.")


def detect_format(path: Path) -> WeightFormat:
    """Which weight format ``path`` holds (a file: Meta's; a folder: by its marker file)."""
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return "fedfms"
        if (path / "config.json").is_file():
            return "transformers"
        raise CheckpointError(
            f"{path}: folder is neither a fedfms checkpoint ({CONFIG_FILE}) nor a transformers "
            "SAM folder (config.json + model.safetensors)"
        )
    if path.is_file():
        return "meta"
    raise CheckpointError(f"{path}: no such file or folder")


def read_meta_state(path: Path) -> dict[str, torch.Tensor]:
    """Meta-format state dict of a ``.pth`` file (tensors only, no code executed)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat state dict of tensors (Meta's SAM format)")
    return state


def read_transformers_state(folder: Path) -> dict[str, torch.Tensor]:
    """transformers-named SAM state dict of a ``save_pretrained`` folder (tied aliases added)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder / 'config.json'}: cannot read: {err}") from err
    if config.get("model_type") != "sam":
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, not 'sam'"
        )
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise CheckpointError(f"{folder}: no model.safetensors (or its index) in this folder")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(read_safetensors(folder / shard))
    add_tied_aliases(state)
    return state


def _encoder_shape(state: dict[str, torch.Tensor]) -> tuple[int, int, int] | None:
    """(width, blocks, heads) of the image encoder held by a transformers-named state."""
    patch = state.get("vision_encoder.patch_embed.projection.weight")
    rel_pos = state.get("vision_encoder.layers.0.attn.rel_pos_h")
    if patch is None or rel_pos is None:
        return None
    blocks = {int(m.group(1)) for key in state if (m := _LAYER_KEY.match(key))}
    return patch.shape[0], len(blocks), patch.shape[0] // rel_pos.shape[1]


def check_backbone(state: dict[str, torch.Tensor], backbone: str, source: Path) -> None:
    """Refuse weights of another backbone with a message saying which one the file holds."""
    shape = _encoder_shape(state)
    preset = PRESETS[backbone]
    if shape is None or shape == (preset.width, preset.depth, preset.heads):
        return
    found = preset_name(*shape) or "unrecognised"
    raise CheckpointError(
        f"{source}: holds a SAM {found} image encoder (width {shape[0]}, {shape[1]} blocks, "
        f"{shape[2]} heads) but the model is configured for backbone {backbone!r} "
        f"(width {preset.width}, {preset.depth} blocks, {preset.heads} heads)"
    )


def _global_layers(model: SamSegmenter) -> list[int]:
    return [i for i, layer in enumerate(model.sam.vision_encoder.layers) if layer.window_size == 0]


def load_pretrained(model: SamSegmenter, path: Path, backbone: str) -> None:
    """Fill the foundation tensors of ``model`` (before any adapter or LoRA is added) from a
    Meta-format file or a transformers folder."""
    fmt = detect_format(path)
    if fmt == "fedfms":
        raise CheckpointError(f"{path}: is a fedfms checkpoint; load it with load_checkpoint")
    targets = model.sam.state_dict()
    if fmt == "meta":
        raw = read_meta_state(path)
        state, unknown = meta_to_transformers(raw)
        check_backbone(state, backbone, path)
        state = resize_position_embeddings(state, targets, _global_layers(model))
        in_file_names = transformers_to_meta(state) | {key: raw[key] for key in unknown}
        check_state(transformers_to_meta(targets), in_file_names, str(path))
    else:
        state = read_transformers_state(path)
        check_backbone(state, backbone, path)
        state = resize_position_embeddings(state, targets, _global_layers(model))
        check_state(targets, state, str(path))
    copy_state(targets, state)
