"""Meta-format SAM state dicts for the model tests.

``official_layout`` is written from Meta's ``segment_anything/modeling`` code (names and shapes),
independently of fedfms's key mapping, so that the mapping is tested against it.
"""

from __future__ import annotations

import torch

from fedfms.models.sam import PRESETS


def official_layout(backbone: str, grid: int = 64) -> dict[str, tuple[int, ...]]:
    """Meta's SAM state-dict names and shapes for ``backbone`` at a ``grid``x``grid`` token grid
    (64 for Meta's 1024-pixel checkpoints)."""
    p = PRESETS[backbone]
    w, d, mlp = p.width, p.prompt_dim, p.decoder_mlp_dim
    head_dim = w // p.heads
    shapes: dict[str, tuple[int, ...]] = {
        "image_encoder.pos_embed": (1, grid, grid, w),
        "image_encoder.patch_embed.proj.weight": (w, 3, 16, 16),
        "image_encoder.patch_embed.proj.bias": (w,),
    }
    for i in range(p.depth):
        length = 2 * grid - 1 if i in p.global_attn_indexes else 2 * p.window_size - 1
        b = f"image_encoder.blocks.{i}."
        shapes |= {
            b + "norm1.weight": (w,), b + "norm1.bias": (w,),
            b + "attn.qkv.weight": (3 * w, w), b + "attn.qkv.bias": (3 * w,),
            b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
            b + "attn.rel_pos_h": (length, head_dim), b + "attn.rel_pos_w": (length, head_dim),
            b + "norm2.weight": (w,), b + "norm2.bias": (w,),
            b + "mlp.lin1.weight": (4 * w, w), b + "mlp.lin1.bias": (4 * w,),
            b + "mlp.lin2.weight": (w, 4 * w), b + "mlp.lin2.bias": (w,),
        }  # fmt: skip
    shapes |= {
        "image_encoder.neck.0.weight": (d, w, 1, 1),
        "image_encoder.neck.1.weight": (d,), "image_encoder.neck.1.bias": (d,),
        "image_encoder.neck.2.weight": (d, d, 3, 3),
        "image_encoder.neck.3.weight": (d,), "image_encoder.neck.3.bias": (d,),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, d // 2),
        "prompt_encoder.not_a_point_embed.weight": (1, d),
        "prompt_encoder.no_mask_embed.weight": (1, d),
        "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2),
        "prompt_encoder.mask_downscaling.0.bias": (4,),
        "prompt_encoder.mask_downscaling.1.weight": (4,),
        "prompt_encoder.mask_downscaling.1.bias": (4,),
        "prompt_encoder.mask_downscaling.3.weight": (16, 4, 2, 2),
        "prompt_encoder.mask_downscaling.3.bias": (16,),
        "prompt_encoder.mask_downscaling.4.weight": (16,),
        "prompt_encoder.mask_downscaling.4.bias": (16,),
        "prompt_encoder.mask_downscaling.6.weight": (d, 16, 1, 1),
        "prompt_encoder.mask_downscaling.6.bias": (d,),
    }  # fmt: skip
    shapes |= {f"prompt_encoder.point_embeddings.{i}.weight": (1, d) for i in range(4)}

    def attention(prefix: str, inner: int) -> dict[str, tuple[int, ...]]:
        named = {f"{prefix}.{n}_proj.weight": (inner, d) for n in "qkv"}
        named |= {f"{prefix}.{n}_proj.bias": (inner,) for n in "qkv"}
        return named | {f"{prefix}.out_proj.weight": (d, inner), f"{prefix}.out_proj.bias": (d,)}

    t = "mask_decoder.transformer"
    for i in range(2):
        layer = f"{t}.layers.{i}"
        shapes |= attention(f"{layer}.self_attn", d)
        shapes |= attention(f"{layer}.cross_attn_token_to_image", d // 2)
        shapes |= attention(f"{layer}.cross_attn_image_to_token", d // 2)
        shapes |= {f"{layer}.norm{j}.{n}": (d,) for j in range(1, 5) for n in ("weight", "bias")}
        shapes |= {
            f"{layer}.mlp.lin1.weight": (mlp, d), f"{layer}.mlp.lin1.bias": (mlp,),
            f"{layer}.mlp.lin2.weight": (d, mlp), f"{layer}.mlp.lin2.bias": (d,),
        }  # fmt: skip
    shapes |= attention(f"{t}.final_attn_token_to_image", d // 2)
    shapes |= {f"{t}.norm_final_attn.weight": (d,), f"{t}.norm_final_attn.bias": (d,)}
    shapes |= {
        "mask_decoder.iou_token.weight": (1, d),
        "mask_decoder.mask_tokens.weight": (4, d),
        "mask_decoder.output_upscaling.0.weight": (d, d // 4, 2, 2),
        "mask_decoder.output_upscaling.0.bias": (d // 4,),
        "mask_decoder.output_upscaling.1.weight": (d // 4,),
        "mask_decoder.output_upscaling.1.bias": (d // 4,),
        "mask_decoder.output_upscaling.3.weight": (d // 4, d // 8, 2, 2),
        "mask_decoder.output_upscaling.3.bias": (d // 8,),
    }

    def mlp3(prefix: str, hidden: int, out: int) -> dict[str, tuple[int, ...]]:
        dims = [(hidden, d), (hidden, hidden), (out, hidden)]
        named = {f"{prefix}.layers.{k}.weight": shape for k, shape in enumerate(dims)}
        return named | {f"{prefix}.layers.{k}.bias": (shape[0],) for k, shape in enumerate(dims)}

    for i in range(4):
        shapes |= mlp3(f"mask_decoder.output_hypernetworks_mlps.{i}", d, d // 8)
    shapes |= mlp3("mask_decoder.iou_prediction_head", d, 4)
    return shapes


def random_state(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for a layout (scaled so that deep random models stay finite)."""
    generator = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(shape, generator=generator) for k, shape in layout.items()}
