"""fedfms vs Meta's reference SAM code (PyPI ``segment-anything``), on a tiny random model.

The package's ``__init__`` imports torchvision (for its predictor), which cannot be imported
here; its ``modeling`` subpackage needs only torch, so it is imported without running the
package ``__init__`` (an empty package module is registered in its place). Skipped when the
package is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import pytest
import torch
from sam_helpers import official_layout

from fedfms.models import build_model
from fedfms.models.sam import PRESETS


def _meta_modeling() -> types.ModuleType:
    if "segment_anything" not in sys.modules:
        spec = importlib.util.find_spec("segment_anything")
        if spec is None or spec.submodule_search_locations is None:
            pytest.skip("segment-anything (Meta's reference code) is not installed")
        package = types.ModuleType("segment_anything")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["segment_anything"] = package
    return importlib.import_module("segment_anything.modeling")


def _meta_tiny_sam(image_size: int) -> torch.nn.Module:
    """Meta's ``Sam`` with the tiny preset's shapes (as ``build_sam._build_sam`` builds ViT-B)."""
    modeling = _meta_modeling()
    p = PRESETS["tiny"]
    grid = image_size // 16
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=p.depth,
            embed_dim=p.width,
            img_size=image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=p.heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=p.global_attn_indexes,
            window_size=p.window_size,
            out_chans=p.prompt_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=p.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=2,
                embedding_dim=p.prompt_dim,
                mlp_dim=p.decoder_mlp_dim,
                num_heads=p.decoder_heads,
            ),
            transformer_dim=p.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=p.prompt_dim,
        ),
    ).eval()


def test_hand_written_layout_matches_meta_code() -> None:
    meta = _meta_tiny_sam(1024)
    shapes = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    assert shapes == official_layout("tiny", grid=64)


@pytest.mark.parametrize("mode", ["sam", "msa"])
def test_outputs_equal_meta_reference(tmp_path: Path, tiny_cfg, tiny_images, mode: str) -> None:
    meta = _meta_tiny_sam(64)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for tensor in meta.state_dict().values():
            tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))
    path = tmp_path / "sam_tiny.pth"
    torch.save(meta.state_dict(), path)

    ours = build_model(tiny_cfg(mode=mode, checkpoint=path)).eval()
    with torch.no_grad():
        embeddings = ours.embed(tiny_images)
        masks = ours.decode(embeddings)
        for i in range(tiny_images.shape[0]):
            meta_embedding = meta.image_encoder(meta.preprocess(255 * tiny_images[i : i + 1]))
            sparse, dense = meta.prompt_encoder(points=None, boxes=None, masks=None)
            meta_masks, _ = meta.mask_decoder.predict_masks(
                meta_embedding, meta.prompt_encoder.get_dense_pe(), sparse, dense
            )
            assert (embeddings[i] - meta_embedding[0]).abs().max() < 1e-4
            assert (masks[i] - meta_masks[0]).abs().max() < 1e-4
    assert masks.shape == (2, 4, 16, 16)
