"""The training dataset of one prepared client folder.

Each item is read from two memory-mapped uint8 ``.npy`` files (no image decoding), scaled to
float32 and, if the caller asks for other sizes than the stored ones, resized on load
(image bilinear antialiased, mask nearest), so a client prepared at 1024/256 can feed a
256/64 CPU model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fedfms.data.manifest import IMAGES_DIR, MASKS_DIR, ClientManifest, read_manifest
from fedfms.data.resize import resize_image_tensor, resize_mask_tensor
from fedfms.errors import FedfmsError


class SampleError(FedfmsError, ValueError):
    """A stored sample array that cannot be read or has the wrong shape; names the file."""


def read_array(path: Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The memory-mapped array of ``path`` (only its header is read here); :class:`SampleError`
    names the file if it is unreadable (corrupt, truncated) or, given ``shape``, of another
    shape (``-1``: any size on that axis)."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:
        raise SampleError(f"{path}: unreadable sample array ({err}); prepare this client again") from None
    if shape is not None and (len(shape) != array.ndim or any(w not in (-1, h) for w, h in zip(shape, array.shape))):
        raise SampleError(f"{path}: array of shape {array.shape}, expected {shape}; prepare this client again")
    return array


def read_tensor(path: Path) -> torch.Tensor:
    """The array of ``path`` as a tensor; :class:`SampleError` names the file if it cannot be
    read or holds values no tensor takes (text, objects)."""
    array = read_array(path)
    try:
        return torch.from_numpy(np.array(array))
    except TypeError as err:
        raise SampleError(f"{path}: sample array of type {array.dtype} ({err}); prepare this client again") from None


class ClientDataset(Dataset):
    """Samples of one client: ``{"image": (3, S, S) float32 in [0, 1], "mask": (C, M, M) float32
    in {0, 1}, "id": str, "case": str}`` (``case``: the manifest's case id); ``indices``
    selects manifest samples (e.g. a train split)."""

    def __init__(
        self,
        client_dir: Path,
        indices: Sequence[int] | None = None,
        image_size: int | None = None,
        mask_size: int | None = None,
    ):
        self.client_dir = Path(client_dir)
        self.manifest: ClientManifest = read_manifest(self.client_dir)
        n = len(self.manifest.samples)
        self.indices = list(range(n)) if indices is None else list(indices)
        bad = [i for i in self.indices if not 0 <= i < n]
        if bad:
            raise IndexError(f"{self.client_dir}: sample indices {bad[:5]} outside 0..{n - 1}")
        self.image_size = image_size or self.manifest.image_size
        self.mask_size = mask_size or self.manifest.mask_size

    def __len__(self) -> int:
        return len(self.indices)

    def sample_id(self, item: int) -> str:
        return self.manifest.samples[self.indices[item]].id

    def case_id(self, item: int) -> str:
        """The case (patient, volume) sample ``item`` belongs to."""
        return self.manifest.samples[self.indices[item]].case_id

    def image_path(self, item: int) -> Path:
        """The stored uint8 image array of sample ``item``."""
        return self.client_dir / IMAGES_DIR / f"{self.sample_id(item)}.npy"

    def load_image(self, item: int) -> torch.Tensor:
        """``(3, S, S)`` float32 in [0, 1], resized to ``image_size``."""
        image_t = read_tensor(self.image_path(item)).float().div_(255.0)
        image_t = resize_image_tensor(image_t, self.image_size).clamp_(0.0, 1.0)
        return image_t.expand(3, -1, -1).contiguous()  # grey stored once, 3 copies on load

    def load_mask(self, item: int) -> torch.Tensor:
        """``(C, M, M)`` float32 in {0, 1}, resized (nearest) to ``mask_size``."""
        mask = read_tensor(self.client_dir / MASKS_DIR / f"{self.sample_id(item)}.npy")
        return resize_mask_tensor(mask, self.mask_size).float()

    def __getitem__(self, item: int) -> dict[str, torch.Tensor | str]:
        return {"image": self.load_image(item), "mask": self.load_mask(item), "id": self.sample_id(item),
                "case": self.case_id(item)}
