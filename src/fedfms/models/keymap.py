"""Names of SAM tensors in Meta's checkpoints <-> transformers' ``SamModel`` names.

Meta's official ``sam_vit_{b,l,h}_*.pth`` and MedSAM checkpoints store ``image_encoder.*``,
``prompt_encoder.*`` and ``mask_decoder.*``; transformers names the same tensors
``vision_encoder.*``, ``prompt_encoder.*`` and ``mask_decoder.*`` with some modules renamed.
Each rule maps a name prefix (``{i}``/``{j}`` stand for block numbers) and keeps the rest of the
name (``weight``, ``bias``, ``q_proj.weight``...). The first matching rule wins.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

_RULES: tuple[tuple[str, str], ...] = (
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.blocks.{i}.norm1.", "vision_encoder.layers.{i}.layer_norm1."),
    ("image_encoder.blocks.{i}.norm2.", "vision_encoder.layers.{i}.layer_norm2."),
    ("image_encoder.blocks.{i}.attn.", "vision_encoder.layers.{i}.attn."),
    ("image_encoder.blocks.{i}.mlp.", "vision_encoder.layers.{i}.mlp."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    (
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "shared_image_embedding.positional_embedding",
    ),
    ("prompt_encoder.point_embeddings.{i}.", "prompt_encoder.point_embed.{i}."),
    ("prompt_encoder.not_a_point_embed.", "prompt_encoder.not_a_point_embed."),
    ("prompt_encoder.no_mask_embed.", "prompt_encoder.no_mask_embed."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    (
        "mask_decoder.transformer.layers.{i}.norm{j}.",
        "mask_decoder.transformer.layers.{i}.layer_norm{j}.",
    ),
    ("mask_decoder.transformer.layers.{i}.", "mask_decoder.transformer.layers.{i}."),
    (
        "mask_decoder.transformer.norm_final_attn.",
        "mask_decoder.transformer.layer_norm_final_attn.",
    ),
    (
        "mask_decoder.transformer.final_attn_token_to_image.",
        "mask_decoder.transformer.final_attn_token_to_image.",
    ),
    ("mask_decoder.iou_token.", "mask_decoder.iou_token."),
    ("mask_decoder.mask_tokens.", "mask_decoder.mask_tokens."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    *(
        (f"mask_decoder.{mlp}.layers.{meta}.", f"mask_decoder.{mlp}.{ours}.")
        for mlp in ("output_hypernetworks_mlps.{i}", "iou_prediction_head")
        for meta, ours in (("0", "proj_in"), ("1", "layers.0"), ("2", "proj_out"))
    ),
)

TIED_ALIASES = {
    "prompt_encoder.shared_embedding.positional_embedding": (
        "shared_image_embedding.positional_embedding"
    )
}
"""transformers keeps SAM's random positional-encoding matrix twice (tied); Meta keeps it once."""


def _pattern(prefix: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", prefix)
    regex = "".join(
        re.escape(part) if n % 2 == 0 else rf"(?P<{part}>\d+)" for n, part in enumerate(parts)
    )
    return re.compile(regex)


_META_TO_HF = [(_pattern(meta), ours) for meta, ours in _RULES]
_HF_TO_META = [(_pattern(ours), meta) for meta, ours in _RULES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.format(**match.groupdict()) + key[match.end() :]
    return None


def meta_to_transformers(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a Meta-format SAM state dict to transformers names.

    Returns the renamed tensors (tied aliases added) and the keys no rule knows, which a strict
    loader reports as unexpected.
    """
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        new_key = _rename(key, _META_TO_HF)
        if new_key is None:
            unknown.append(key)
        else:
            renamed[new_key] = value
    add_tied_aliases(renamed)
    return renamed, unknown


def transformers_to_meta(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ``SamModel`` state dict to Meta's names (tied aliases dropped)."""
    renamed = {}
    for key, value in state.items():
        if key in TIED_ALIASES:
            continue
        new_key = _rename(key, _HF_TO_META)
        if new_key is None:
            raise KeyError(f"no Meta name for transformers SAM tensor {key!r}")
        renamed[new_key] = value
    return renamed


def add_tied_aliases(state: dict[str, torch.Tensor]) -> None:
    """Add transformers' second name of tied tensors where only the first is present."""
    for alias, name in TIED_ALIASES.items():
        if name in state and alias not in state:
            state[alias] = state[name]
