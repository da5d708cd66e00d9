"""fedfms vs Meta's reference SAM code (PyPI ``segment-anything``), on a tiny random model
(Meta's modules built by :func:`fedfms.benchmarks.reference.meta_sam`, as ``fedfms bench
step`` builds its reference). Skipped when the package is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sam_helpers import official_layout

from fedfms.benchmarks.reference import meta_sam
from fedfms.models import build_model

pytest.importorskip("segment_anything")


def _meta_tiny_sam(image_size: int) -> torch.nn.Module:
    """Meta's ``Sam`` with the tiny preset's shapes, in eval mode."""
    return meta_sam("tiny", image_size).eval()


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
