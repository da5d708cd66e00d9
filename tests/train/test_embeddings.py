"""Image embeddings computed once per sample and reused; recomputed when anything they depend
on changes (tiny SAM in decoder mode; the cache is the same for every backbone)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np
import torch

from fedfms.config import ModelConfig
from fedfms.data import ClientDataset, make_synthetic_federation
from fedfms.models import build_model
from fedfms.train.embeddings import cached_embeddings

CPU = torch.device("cpu")


def _dataset(root: Path, count: int = 5) -> ClientDataset:
    client = make_synthetic_federation(root, num_clients=1, num_classes=1, image_size=64, mask_size=16,
                                       samples_per_client=(count,), seed=3)[0]
    return ClientDataset(client, image_size=64, mask_size=16)


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="tiny", image_size=64, mode="decoder")).eval()


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")}


def test_embeddings_equal_the_encoder_output_and_are_computed_once(tmp_path: Path) -> None:
    images, model, cache = _dataset(tmp_path / "data"), _model(), tmp_path / "cache"
    first = cached_embeddings(images, model, cache, CPU, torch.float32)
    written = _files(cache)
    assert len(written) == len(images) == len(first)
    item = first[2]
    with torch.no_grad():
        direct = model.embed(images[2]["image"][None])[0]
    assert item["embedding"].shape == direct.shape == (32, 4, 4)
    assert torch.allclose(item["embedding"], direct, atol=2e-3, rtol=2e-3)  # stored as float16
    assert torch.equal(item["mask"], images[2]["mask"]) and item["id"] == images[2]["id"]
    cached_embeddings(images, model, cache, CPU, torch.float32)
    assert _files(cache) == written


def test_changed_weights_precision_or_image_are_recomputed_never_reused(tmp_path: Path) -> None:
    images, model, cache = _dataset(tmp_path / "data"), _model(), tmp_path / "cache"
    original = cached_embeddings(images, model, cache, CPU, torch.float32)
    with torch.no_grad():
        model.image_encoder.neck.conv2.weight.add_(torch.randn_like(model.image_encoder.neck.conv2.weight))
    changed = cached_embeddings(images, model, cache, CPU, torch.float32)
    assert len(_files(cache)) == 2 * len(images)
    assert not torch.allclose(original[0]["embedding"], changed[0]["embedding"])
    cached_embeddings(images, model, cache, CPU, torch.bfloat16)
    assert len(_files(cache)) == 3 * len(images)
    sample = images.image_path(1)
    array = np.load(sample)
    array[..., :8] = 255 - array[..., :8]
    np.save(sample, array)
    edited = cached_embeddings(images, model, cache, CPU, torch.float32)
    assert len(_files(cache)) == 3 * len(images) + 1
    assert edited.paths[0] == changed.paths[0] and edited.paths[1] != changed.paths[1]


def test_decoder_mode_batches_give_the_same_logits_as_images(tmp_path: Path) -> None:
    images, model = _dataset(tmp_path / "data", count=2), _model()
    cached = cached_embeddings(images, model, tmp_path / "cache", CPU, torch.float32)
    with torch.no_grad():
        from_images = model(torch.stack([images[i]["image"] for i in range(2)]))
        from_cache = model.classify(torch.stack([cached[i]["embedding"] for i in range(2)]))
    assert from_cache.shape == from_images.shape == (2, 1, 16, 16)
    assert torch.allclose(from_cache, from_images, atol=1e-2)


def test_the_progress_line_reports_the_time_it_took(tmp_path: Path, caplog) -> None:
    """The batch loop's index once overwrote the timer: 36 embeddings in 2574 s for 133 s of work."""
    images, model = _dataset(tmp_path / "data", count=12), _model()  # 3 batches: the index reaches 8
    caplog.set_level(logging.INFO, logger="fedfms")
    start = time.perf_counter()
    cached_embeddings(images, model, tmp_path / "cache", CPU, torch.float32)
    wall = time.perf_counter() - start
    [line] = [m for m in caplog.messages if " embeddings in " in m]
    seconds = float(re.search(r"12 embeddings in (\d+) s", line).group(1))
    assert seconds <= wall + 0.5, line
