"""The prompt-free SAM segmenter: shapes, presets, SDPA, and agreement with transformers' own
``SamModel`` forward on the same weights."""

from __future__ import annotations

import pytest
import torch
from transformers import SamModel
from transformers.models.sam.modeling_sam import SamVisionSdpaAttention

from fedfms.config import ModelConfig
from fedfms.models import build_model
from fedfms.models.sam import sam_config


@pytest.mark.parametrize("num_classes", [1, 2])
def test_output_shapes(tiny_cfg, tiny_images, num_classes: int) -> None:
    cfg = tiny_cfg(num_classes=num_classes)
    model = build_model(cfg)
    assert model.training
    logits = model(tiny_images)
    assert (
        logits.shape == (2, num_classes, cfg.mask_size, cfg.mask_size) == (2, num_classes, 16, 16)
    )
    assert model.embed(tiny_images).shape == (2, 32, 4, 4)


def test_128_pixel_input(tiny_cfg) -> None:
    model = build_model(tiny_cfg(image_size=128))
    assert model(torch.rand(1, 3, 128, 128)).shape == (1, 1, 32, 32)


@pytest.mark.parametrize(
    ("backbone", "width", "depth", "heads", "globals_"),
    [
        ("vit_b", 768, 12, 12, [2, 5, 8, 11]),
        ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
        ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
    ],
)
def test_official_presets(
    backbone: str, width: int, depth: int, heads: int, globals_: list[int]
) -> None:
    config = sam_config(backbone, 1024)
    vision = config.vision_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (
        width,
        depth,
        heads,
    )
    assert vision.global_attn_indexes == globals_
    assert (vision.window_size, vision.patch_size, vision.output_channels) == (14, 16, 256)
    with torch.device("meta"):
        model = SamModel(config)
    assert all(
        isinstance(layer.attn, SamVisionSdpaAttention) for layer in model.vision_encoder.layers
    )
    assert model.config.mask_decoder_config._attn_implementation == "sdpa"
    assert model.vision_encoder.pos_embed.shape == (1, 64, 64, width)


def test_image_size_must_be_a_multiple_of_16() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        sam_config("tiny", 72)


def test_decoder_gives_transformers_masks_in_token_order(tiny_cfg, tiny_images) -> None:
    """Our 4 masks = transformers' single-mask output (token 0) + its 3 multimask outputs."""
    model = build_model(tiny_cfg()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        pixels = (tiny_images * 255 - model.pixel_mean) / model.pixel_std
        single = model.sam(pixel_values=pixels, multimask_output=False).pred_masks[:, 0]
        multi = model.sam(pixel_values=pixels, multimask_output=True).pred_masks[:, 0]
        ours = model.decode(model.embed(tiny_images))
    torch.testing.assert_close(ours, torch.cat([single, multi], dim=1), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the head is the documented 1x1 mix of the 4 mask logits per class
        weight, bias = model.head.weight[:, :, 0, 0], model.head.bias
        by_hand = torch.einsum("ck,bkhw->bchw", weight, ours) + bias[None, :, None, None]
        torch.testing.assert_close(model(tiny_images), by_hand, atol=1e-5, rtol=1e-5)


def test_reference_choices_bare_prompt_unit_input_and_token0_head(tiny_cfg, tiny_images) -> None:
    """The FedFMS reference code's model, by name: no prompt embeddings at all in the decoder,
    the [0, 1] image straight into the encoder, mask token 0 as the one-class output."""
    torch.manual_seed(0)
    ours = build_model(tiny_cfg()).eval()
    reference = build_model(tiny_cfg(prompt="bare", input_norm="unit", head="token0")).eval()
    reference.sam.load_state_dict(ours.sam.state_dict())
    assert not list(reference.head.parameters())
    with torch.no_grad():
        ours.sam.prompt_encoder.no_mask_embed.weight.normal_()
        embeddings = reference.embed(tiny_images)
        torch.testing.assert_close(embeddings, ours.sam.vision_encoder(tiny_images).last_hidden_state)
        assert not torch.allclose(embeddings, ours.embed(tiny_images))  # imagenet mean/std by default
        masks = reference.decode(embeddings)
        torch.testing.assert_close(reference(tiny_images), masks[:, :1])
        assert not torch.allclose(masks, ours.decode(embeddings))  # the no-mask embedding matters
        ours.sam.prompt_encoder.no_mask_embed.weight.zero_()
        torch.testing.assert_close(masks, ours.decode(embeddings))  # ... and is all "bare" leaves out


@pytest.mark.parametrize("fields, message", [
    ({"head": "token0", "num_classes": 2}, "one class"),
    ({"backbone": "litemedsam", "input_norm": "unit"}, "min-max"),
    ({"backbone": "litemedsam", "prompt": "bare"}, "not offered"),
    ({"backbone": "vit_b", "prompt": "full_box"}, "not offered"),
])
def test_choices_that_do_not_fit_the_backbone_are_refused(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)
