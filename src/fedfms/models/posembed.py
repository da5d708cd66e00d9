"""Resize SAM's position embeddings when the input size differs from the checkpoint's (1024).

* absolute ``pos_embed (1, G, G, D)`` -> ``(1, S/16, S/16, D)``, bilinear;
* relative tables ``rel_pos_h/w (2G - 1, head_dim)`` of the GLOBAL-attention blocks ->
  ``(2 S/16 - 1, head_dim)``, linear. This is the interpolation transformers' and Meta's
  ``get_rel_pos`` would apply at run time, done once at load time;
* windowed blocks keep their ``(2 * window - 1, head_dim)`` tables: the window does not change.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F

_ABS_KEY = "vision_encoder.pos_embed"
_REL_KEY = re.compile(r"vision_encoder\.layers\.(\d+)\.attn\.rel_pos_[hw]")


def resize_absolute(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, G, G, D)`` -> ``(1, grid, grid, D)`` by bilinear interpolation."""
    resized = F.interpolate(
        pos_embed.permute(0, 3, 1, 2).float(),
        size=(grid, grid),
        mode="bilinear",
        align_corners=False,
    )
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resize_relative(table: torch.Tensor, length: int) -> torch.Tensor:
    """``(L, head_dim)`` -> ``(length, head_dim)`` by linear interpolation along L."""
    resized = F.interpolate(table.T[None].float(), size=length, mode="linear", align_corners=False)
    return resized[0].T.to(table.dtype)


def resize_position_embeddings(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    global_layers: Collection[int],
) -> dict[str, torch.Tensor]:
    """A copy of a transformers-named SAM ``state`` whose position embeddings have the shapes of
    ``target`` (the model's own state). Only same-width tensors are resized; any other shape
    difference is left for the strict check to report."""
    resized = dict(state)
    if _ABS_KEY in state and _ABS_KEY in target:
        source, wanted = state[_ABS_KEY].shape, target[_ABS_KEY].shape
        if source != wanted and source[-1] == wanted[-1]:
            resized[_ABS_KEY] = resize_absolute(state[_ABS_KEY], wanted[1])
    for key, value in state.items():
        match = _REL_KEY.fullmatch(key)
        if match is None or key not in target or int(match.group(1)) not in global_layers:
            continue
        wanted = target[key].shape
        if value.shape != wanted and value.shape[1] == wanted[1]:
            resized[key] = resize_relative(value, wanted[0])
    return resized
