"""Prompt-free multi-class SAM segmenter built from transformers' ``SamModel`` modules.

``images (B, 3, S, S) in [0, 1]`` -> pixel normalisation -> ViT image encoder
``(B, 256, S/16, S/16)`` -> mask decoder with no user prompt, all 4 mask tokens
``(B, 4, S/4, S/4)`` -> 1x1 convolution ``(B, C, S/4, S/4)`` class logits.

Prompt-free choice (``prompt``): by default (``none``) the decoder sees no sparse prompt at all
(only its IoU token and its 4 mask tokens) and the learned "no mask" dense embedding added to
the image embedding: what Meta's ``Sam`` does when it is given neither points, boxes nor masks,
so it is reproducible against Meta's modeling code. The FedFMS reference code feeds a dummy
point at (0, 0) through the prompt encoder, but its decoder then discards both prompt
embeddings: no prompt token and no dense embedding; ``bare`` reproduces that.
Input normalisation (``input_norm``): SAM's ImageNet mean/std (``imagenet``, default, what the
pretrained weights expect) or the [0, 1] image as it is (``unit``, as the reference feeds it).

Backbone presets keep the official shapes (ViT-B/L/H, patch 16, window 14, 256-wide neck and
decoder). ``tiny`` is a 2-block, 32-wide model with the same structure for CPU tests and demos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import SamConfig, SamModel

from fedfms.models.segmenter import NUM_MASK_TOKENS, PromptFreeSegmenter, class_head

PATCH_SIZE = 16
PRETRAINING_IMAGE_SIZE = 1024
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamPreset:
    """Shape of one SAM backbone: ViT image encoder, then neck/prompt/decoder width."""

    width: int
    depth: int
    heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8


PRESETS: dict[str, SamPreset] = {
    "tiny": SamPreset(32, 2, 2, (1,), 4, prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2),
    "vit_b": SamPreset(768, 12, 12, (2, 5, 8, 11), 14),
    "vit_l": SamPreset(1024, 24, 16, (5, 11, 17, 23), 14),
    "vit_h": SamPreset(1280, 32, 16, (7, 15, 23, 31), 14),
}


def preset_name(width: int, depth: int, heads: int) -> str | None:
    """The preset with this image-encoder shape, or ``None``."""
    for name, preset in PRESETS.items():
        if (preset.width, preset.depth, preset.heads) == (width, depth, heads):
            return name
    return None


def sam_config(backbone: str, image_size: int) -> SamConfig:
    """transformers ``SamConfig`` of a preset for square ``image_size`` inputs, SDPA attention.

    Layer-norm epsilons follow Meta's code (1e-6 in the encoder, 1e-5 in the two-way
    transformer), so that official checkpoints reproduce Meta's outputs.
    """
    if backbone not in PRESETS:
        raise ValueError(f"unknown SAM backbone {backbone!r}; choose one of {sorted(PRESETS)}")
    if image_size % PATCH_SIZE:
        raise ValueError(f"SAM image_size must be a multiple of {PATCH_SIZE}, got {image_size}")
    preset = PRESETS[backbone]
    vision = {
        "hidden_size": preset.width,
        "num_hidden_layers": preset.depth,
        "num_attention_heads": preset.heads,
        "global_attn_indexes": list(preset.global_attn_indexes),
        "window_size": preset.window_size,
        "output_channels": preset.prompt_dim,
        "num_pos_feats": preset.prompt_dim // 2,
        "image_size": image_size,
        "patch_size": PATCH_SIZE,
        "mlp_ratio": 4.0,
        "layer_norm_eps": 1e-6,
    }
    prompt = {"hidden_size": preset.prompt_dim, "image_size": image_size, "patch_size": PATCH_SIZE}
    decoder = {
        "hidden_size": preset.prompt_dim,
        "mlp_dim": preset.decoder_mlp_dim,
        "num_attention_heads": preset.decoder_heads,
        "iou_head_hidden_dim": preset.prompt_dim,
        "num_multimask_outputs": NUM_MASK_TOKENS - 1,
        "layer_norm_eps": 1e-5,
    }
    return SamConfig(
        vision_config=vision,
        prompt_encoder_config=prompt,
        mask_decoder_config=decoder,
        attn_implementation="sdpa",
    )


_DEFAULT_INIT_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.LayerNorm, nn.Embedding)


class SamSegmenter(PromptFreeSegmenter):
    """SAM without prompts plus a class head: ``(B, 3, S, S)`` -> ``(B, C, S/4, S/4)`` logits.

    ``self.sam`` is a complete transformers ``SamModel`` (its parameter names are the ones
    pretrained weights are mapped onto); ``self.head`` is ``Conv2d(4, C, 1)`` (``head="conv"``)
    or mask token 0 for one class (``"token0"``). Pixel normalisation (SAM's ImageNet mean/std on
    a 0-255 scale, with ``input_norm="imagenet"``) uses non-persistent buffers.
    """

    FOUNDATION = "sam"
    PARTS = ("vision_encoder", "mask_decoder", "prompt_encoder")

    def __init__(self, config: SamConfig, num_classes: int, input_norm: str = "imagenet",
                 head: str = "conv", prompt: str = "none") -> None:
        super().__init__()
        self.sam = SamModel(config)
        self.head = class_head(num_classes, head)
        self.input_norm = input_norm
        self.prompt = prompt
        self.register_buffer(
            "pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False
        )
        self.reset_sam_parameters()

    def reset_sam_parameters(self) -> None:
        """Random SAM weights as Meta's ``build_sam`` draws them without a checkpoint (the
        ``-PT`` variants): PyTorch's default initialisation of every layer, zero position
        embeddings, a standard-normal matrix for the random-Fourier positional encoding.
        transformers' own initialisation draws the image encoder with std 1e-10 (meant to be
        overwritten by pretrained weights), which would make an untrained encoder constant.
        """
        for module in self.sam.modules():
            if isinstance(module, _DEFAULT_INIT_LAYERS):
                module.reset_parameters()
        encoder = self.sam.vision_encoder
        gaussian = self.sam.shared_image_embedding.positional_embedding
        with torch.no_grad():
            encoder.pos_embed.zero_()
            for layer in encoder.layers:
                layer.attn.rel_pos_h.zero_()
                layer.attn.rel_pos_w.zero_()
            gaussian.normal_()
            self.sam.prompt_encoder.shared_embedding.positional_embedding.copy_(gaussian)

    def prompt_parts_used(self) -> tuple[str, ...]:
        """``none``: the learned no-mask embedding; ``bare``: nothing of the prompt encoder."""
        return ("no_mask_embed",) if self.prompt == "none" else ()

    def attention_blocks(self) -> list[tuple[nn.Module, int]]:
        """Every ViT layer of the image encoder, with its width."""
        return [(layer, layer.layer_norm1.normalized_shape[0]) for layer in self.sam.vision_encoder.layers]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` images in [0, 1] -> ``(B, 256, S/16, S/16)`` image embeddings."""
        pixels = (images * 255.0 - self.pixel_mean) / self.pixel_std if self.input_norm == "imagenet" else images
        return self.sam.vision_encoder(pixels).last_hidden_state

    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, 256, h, w)`` image embeddings -> ``(B, 4, 4h, 4w)`` logits of all 4 mask tokens.

        transformers' ``SamMaskDecoder.forward`` returns mask 0 (``multimask_output=False``) or
        masks 1-3, never all four from one pass, so its steps run here in its order: the two-way
        transformer over the output tokens (no prompt token) and the image embedding (plus, with
        ``prompt="none"``, the prompt encoder's dense embedding for no prompt: its learned
        no-mask embedding), then the upscaling and one hypernetwork MLP per mask token. Tests pin
        the result to transformers' own forward (both calls, tests/models/test_sam_segmenter.py)
        and to Meta's code (tests/models/test_sam_meta_reference.py): an upgrade that changes
        either fails there instead of silently changing what trains.
        """
        decoder = self.sam.mask_decoder
        batch, channels, height, width = embeddings.shape
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight])
        tokens = tokens.expand(batch, 1, -1, -1)
        if self.prompt == "none":
            _, dense = self.sam.prompt_encoder(input_points=None, input_labels=None, input_boxes=None, input_masks=None)
            embeddings = embeddings + dense
        positions = self.sam.get_image_wide_positional_embeddings().expand(batch, -1, -1, -1)
        queries, keys = decoder.transformer(
            point_embeddings=tokens,
            image_embeddings=embeddings,
            image_positional_embeddings=positions,
            attention_similarity=None,
        )
        mask_tokens = queries[:, 0, 1 : 1 + NUM_MASK_TOKENS]
        features = keys[:, 0].transpose(1, 2).reshape(batch, channels, height, width)
        upscaled = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(features)))
        upscaled = decoder.activation(decoder.upscale_conv2(upscaled))
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
            dim=1,
        )
        masks = hyper @ upscaled.flatten(2)
        return masks.reshape(batch, NUM_MASK_TOKENS, *upscaled.shape[-2:])
