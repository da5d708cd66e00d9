"""Pretrained weights: Meta key mapping, transformers folders, position-embedding resizing, and
strict-loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from sam_helpers import official_layout, random_state
from transformers import SamModel

from fedfms.models import CheckpointError, build_model
from fedfms.models.keymap import meta_to_transformers, transformers_to_meta
from fedfms.models.sam import sam_config


def _save_transformers_folder(folder: Path, model: SamModel) -> None:
    """A ``save_pretrained``-like folder: config.json + model.safetensors (tied copy dropped)."""
    folder.mkdir()
    (folder / "config.json").write_text(model.config.to_json_string())
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    del state["prompt_encoder.shared_embedding.positional_embedding"]
    save_file(state, folder / "model.safetensors")


def test_mapping_round_trip_and_transformers_shapes() -> None:
    official = random_state(official_layout("tiny"))
    mapped, unknown = meta_to_transformers(official)
    assert unknown == []
    back = transformers_to_meta(mapped)
    assert list(back) == list(official)
    assert all(back[k] is official[k] for k in official)
    native = SamModel(sam_config("tiny", 1024)).state_dict()
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in native.items()}


@pytest.mark.parametrize("backbone", ["vit_b", "vit_h"])
def test_official_names_cover_large_backbones(backbone: str) -> None:
    with torch.device("meta"):
        official = {k: torch.empty(s) for k, s in official_layout(backbone).items()}
        native = SamModel(sam_config(backbone, 1024)).state_dict()
    mapped, unknown = meta_to_transformers(official)
    assert unknown == []
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in native.items()}
    assert len(transformers_to_meta(native)) == len(official)


def test_meta_file_and_transformers_folder_give_native_outputs(
    tmp_path: Path, tiny_cfg, tiny_images
) -> None:
    """The same weights as a Meta .pth file and as a transformers folder: our model from either
    equals transformers' SamModel loaded natively (from_pretrained of the local folder)."""
    official = random_state(official_layout("tiny", grid=4), seed=5)
    torch.save(official, tmp_path / "sam_tiny.pth")
    native = SamModel(sam_config("tiny", 64))
    native.load_state_dict(meta_to_transformers(official)[0])
    _save_transformers_folder(tmp_path / "hf", native)
    native = SamModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()

    from_meta = build_model(tiny_cfg(checkpoint=tmp_path / "sam_tiny.pth")).eval()
    from_hf = build_model(tiny_cfg(checkpoint=tmp_path / "hf")).eval()
    from_hf.head.load_state_dict(from_meta.head.state_dict())
    with torch.no_grad():
        pixels = (tiny_images * 255 - from_meta.pixel_mean) / from_meta.pixel_std
        embeddings = native.get_image_embeddings(pixels)
        first = native(pixel_values=pixels, multimask_output=False).pred_masks[:, 0]
        others = native(pixel_values=pixels, multimask_output=True).pred_masks[:, 0]
        for model in (from_meta, from_hf):
            torch.testing.assert_close(model.embed(tiny_images), embeddings, atol=1e-5, rtol=0)
            masks = model.decode(model.embed(tiny_images))
            torch.testing.assert_close(masks, torch.cat([first, others], 1), atol=1e-5, rtol=0)
        assert torch.equal(from_meta(tiny_images), from_hf(tiny_images))


@pytest.mark.parametrize("image_size", [64, 128])
def test_position_embeddings_resized_from_1024(tmp_path: Path, tiny_cfg, image_size: int) -> None:
    """Ramps in, ramps out: bilinear/linear interpolation with half-pixel centres (what Meta's
    ``get_rel_pos`` does at run time) samples a linear ramp at ``(i + 0.5) * scale - 0.5``, so a
    swapped axis, corner-aligned or nearest sampling, or a lost channel gives other numbers."""
    official = random_state(official_layout("tiny", grid=64))
    rows, cols, channels = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), torch.arange(32.0), indexing="ij")
    official["image_encoder.pos_embed"] = (rows + 100 * cols + 0.01 * channels)[None]
    lengths, dims = torch.meshgrid(torch.arange(127.0), torch.arange(16.0), indexing="ij")
    official["image_encoder.blocks.1.attn.rel_pos_h"] = lengths + 0.01 * dims  # block 1: global attention
    torch.save(official, tmp_path / "sam_tiny_1024.pth")
    model = build_model(tiny_cfg(image_size=image_size, checkpoint=tmp_path / "sam_tiny_1024.pth"))
    grid = image_size // 16
    encoder = model.sam.vision_encoder

    def centres(size: int, source: int) -> torch.Tensor:
        return (torch.arange(size) + 0.5) * (source / size) - 0.5

    at = centres(grid, 64)
    expected = at[:, None, None] + 100 * at[None, :, None] + 0.01 * torch.arange(32.0)
    torch.testing.assert_close(encoder.pos_embed, expected[None])
    length = 2 * grid - 1
    torch.testing.assert_close(encoder.layers[1].attn.rel_pos_h,
                               centres(length, 127)[:, None] + 0.01 * torch.arange(16.0))
    window = official["image_encoder.blocks.0.attn.rel_pos_w"]
    assert torch.equal(encoder.layers[0].attn.rel_pos_w, window)  # windowed block: unchanged
    assert torch.equal(
        encoder.layers[0].attn.qkv.weight, official["image_encoder.blocks.0.attn.qkv.weight"]
    )
    assert model(torch.rand(1, 3, image_size, image_size)).shape == (1, 1, image_size // 4, image_size // 4)


def _write(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "sam.pth"
    torch.save(state, path)
    return path


def test_missing_key_is_named_with_the_file(tmp_path: Path, tiny_cfg) -> None:
    state = random_state(official_layout("tiny"))
    del state["mask_decoder.iou_token.weight"]
    path = _write(tmp_path, state)
    with pytest.raises(
        CheckpointError, match=r"sam\.pth.*missing keys \(1\): mask_decoder\.iou_token\.weight"
    ):
        build_model(tiny_cfg(checkpoint=path))


def test_unexpected_key_is_named(tmp_path: Path, tiny_cfg) -> None:
    state = random_state(official_layout("tiny"))
    state["image_encoder.blocks.0.attn.extra"] = torch.zeros(3)
    state["something_else.weight"] = torch.zeros(3)
    path = _write(tmp_path, state)
    pattern = (
        r"unexpected keys \(2\): image_encoder\.blocks\.0\.attn\.extra, something_else\.weight"
    )
    with pytest.raises(CheckpointError, match=pattern):
        build_model(tiny_cfg(checkpoint=path))


def test_wrong_shape_is_named(tmp_path: Path, tiny_cfg) -> None:
    state = random_state(official_layout("tiny"))
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 32)
    path = _write(tmp_path, state)
    with pytest.raises(
        CheckpointError,
        match=r"mask_decoder\.mask_tokens\.weight: \(3, 32\) in .*sam\.pth vs \(4, 32\)",
    ):
        build_model(tiny_cfg(checkpoint=path))


def test_other_backbone_is_recognised(tmp_path: Path, tiny_cfg) -> None:
    state = {  # enough of a ViT-B file to recognise it: patch embedding + one tensor per block
        k: torch.zeros(shape)
        for k, shape in official_layout("vit_b").items()
        if k == "image_encoder.patch_embed.proj.weight" or k.endswith("rel_pos_h")
    }
    path = _write(tmp_path, state)
    with pytest.raises(
        CheckpointError, match=r"sam\.pth: holds a SAM vit_b image encoder .* backbone 'tiny'"
    ):
        build_model(tiny_cfg(checkpoint=path))


def test_corrupt_files(tmp_path: Path, tiny_cfg) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"broken\.pth: cannot read"):
        build_model(tiny_cfg(checkpoint=path))
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "sam"}))
    (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        build_model(tiny_cfg(checkpoint=folder))
    with pytest.raises(CheckpointError, match="no such file"):
        build_model(tiny_cfg(checkpoint=tmp_path / "absent.pth"))
