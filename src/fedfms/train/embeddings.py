"""Image embeddings computed once: what makes a frozen foundation model trainable on a laptop.

In ``decoder`` mode the image encoder never changes, so each site runs it once per sample
(with a progress bar), keeps the ``(256, h, w)`` embeddings on its own disk and trains and
evaluates the decoder on them after that (LiteMedSAM on 2 CPU cores: ~2.4 s per image through
the encoder, against well under a second for a decoder step). Nothing of the cache is sent.

Layout: ``ROOT/<context>/<sample>.npy`` (float16). ``<context>`` is a digest of the encoder's
weights, the model class (its input normalisation is part of the model), the input size and
the compute precision; ``<sample>`` is a digest of the sample's stored image bytes. A change of
weights, preprocessing or data therefore reads other files: stale entries are never used. Files
are written to a temporary name and renamed, so a killed run leaves no partial entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from fedfms.data import ClientDataset
from fedfms.io import atomic_write
from fedfms.models.segmenter import PromptFreeSegmenter
from fedfms.models.state import state_digest
from fedfms.train.device import autocast

logger = logging.getLogger("fedfms")
FORMAT_VERSION = 1
_BATCH = 4


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/fedfms/embeddings`` (``~/.cache/fedfms/embeddings``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedfms" / "embeddings"


def cache_context(model: PromptFreeSegmenter, image_size: int, dtype: torch.dtype) -> str:
    """Digest of everything but the sample that an embedding depends on."""
    description = {
        "format": FORMAT_VERSION,
        "model": type(model).__name__,
        "encoder": state_digest(model.image_encoder.state_dict()),
        "image_size": image_size,
        "precision": str(dtype),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:32]


class EmbeddingDataset(Dataset):
    """Items ``{"embedding": (256, h, w) float32, "mask": (C, M, M), "id": str, "case": str}`` of a
    :class:`ClientDataset` whose embeddings are all in the cache (see :func:`cached_embeddings`)."""

    def __init__(self, images: ClientDataset, paths: list[Path]) -> None:
        self.images = images
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | str]:
        embedding = torch.from_numpy(np.load(self.paths[item])).float()
        return {"embedding": embedding, "mask": self.images.load_mask(item), "id": self.images.sample_id(item),
                "case": self.images.case_id(item)}


@torch.no_grad()
def cached_embeddings(
    images: ClientDataset,
    model: PromptFreeSegmenter,
    root: Path,
    device: torch.device,
    dtype: torch.dtype,
    desc: str = "embeddings",
) -> EmbeddingDataset:
    """The embeddings of ``images`` under ``model``'s frozen encoder, computing (in batches of
    4, with a progress bar) only the samples the cache lacks."""
    folder = Path(root) / cache_context(model, images.image_size, dtype)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{_file_digest(images.image_path(i))}.npy" for i in range(len(images))]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    if missing:
        logger.info("%s: computing %d of %d image embeddings once (cache %s)", desc, len(missing), len(paths), folder)
        started = time.perf_counter()
        _embed_into(images, model, [(i, paths[i]) for i in missing], device, dtype, desc)
        seconds = time.perf_counter() - started
        logger.info("%s: %d embeddings in %.1f s (%.2f s per image)", desc, len(missing), seconds, seconds / len(missing))
    return EmbeddingDataset(images, paths)


def _embed_into(images: ClientDataset, model: PromptFreeSegmenter, targets: list[tuple[int, Path]],
                device: torch.device, dtype: torch.dtype, desc: str) -> None:
    """Run the encoder on the samples of ``targets`` (index, cache file) in batches of 4 and
    write each embedding to its file; the model's training flag is restored afterwards."""
    was_training = model.training
    model.to(device).eval()
    for first in tqdm(range(0, len(targets), _BATCH), desc=desc, unit="batch", leave=False, disable=None):
        chunk = targets[first : first + _BATCH]
        batch = torch.stack([images.load_image(i) for i, _ in chunk]).to(device)
        with autocast(device, dtype):
            embeddings = model.embed(batch)
        for (_, path), embedding in zip(chunk, embeddings.float().cpu().numpy().astype(np.float16)):
            atomic_write(path, lambda stream, array=embedding: np.save(stream, array))
    model.train(was_training)
