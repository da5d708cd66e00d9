"""Atomic writing of prepared client folders.

New client: everything goes into a hidden temporary sibling ``.<client>.tmp-XXXX`` which is renamed
to ``<client>`` only when the whole preparation succeeded, so a failure leaves no half-written
client and keeps an existing one (replaced only with ``overwrite=True``, after success) intact.

Append: sample files are written first under ids not yet used, then the manifest is replaced
atomically (``os.replace``); on failure the new sample files are removed and the manifest is
untouched, so readers never see a sample that is not complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from fedfms.data.manifest import (
    IMAGES_DIR,
    MANIFEST_NAME,
    MASKS_DIR,
    ClientManifest,
    SampleRecord,
    read_manifest,
)
from fedfms.errors import FedfmsError
from fedfms.io import atomic_write_text, umask


class ClientExistsError(FedfmsError, FileExistsError):
    """The target client folder exists and neither overwrite nor append was asked for."""


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 (round to nearest; quantisation step 1/255)."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


class ClientWriter:
    """Context manager that writes one prepared client folder atomically.

    >>> with ClientWriter(out, "site-A", ["disc", "cup"], 1024, 256, {"converter": "images"}) as w:
    ...     w.add(image, mask, SampleRecord(id="x", case_id="x", source="x.png"))

    ``image``: (K, S, S) float in [0, 1] or uint8, K in {1, 3}; ``mask``: (C, M, M) bool/{0,1}.
    ``mode``: ``"create"`` (error if the client exists), ``"overwrite"`` (replace it on success)
    or ``"append"`` (add samples to an existing client with the same classes and sizes).
    """

    def __init__(
        self,
        out_root: Path,
        client: str,
        class_names: list[str],
        image_size: int,
        mask_size: int,
        preprocessing: dict[str, Any],
        mode: str = "create",
    ):
        if mode not in ("create", "overwrite", "append"):
            raise ValueError(f"mode must be create, overwrite or append, not {mode!r}")
        self.out_root = Path(out_root)
        self.final_dir = self.out_root / client
        self.mode = mode
        self.manifest = ClientManifest(
            client=client, class_names=list(class_names), image_size=image_size, mask_size=mask_size,
            preprocessing=dict(preprocessing),
        )
        self._new: list[SampleRecord] = []
        self._dir: Path | None = None

    @property
    def samples_written(self) -> int:
        return len(self._new)

    def __enter__(self) -> ClientWriter:
        exists = (self.final_dir / MANIFEST_NAME).is_file()
        if self.mode == "append" and exists:
            self._open_for_append()
        elif exists and self.mode == "create":
            raise ClientExistsError(f"{self.final_dir}: client folder exists (use overwrite or append)")
        elif self.final_dir.exists() and not exists and any(self.final_dir.iterdir()):
            raise ClientExistsError(f"{self.final_dir}: exists and is not a prepared client folder")
        else:
            self.out_root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix=f".{self.final_dir.name}.tmp-", dir=self.out_root))
            self._dir.chmod(0o777 & ~umask())  # mkdtemp makes 0700; a client folder is an ordinary folder
        (self._dir / IMAGES_DIR).mkdir(exist_ok=True)
        (self._dir / MASKS_DIR).mkdir(exist_ok=True)
        return self

    def _open_for_append(self) -> None:
        existing = read_manifest(self.final_dir)
        mine = self.manifest
        for name in ("class_names", "image_size", "mask_size"):
            if getattr(existing, name) != getattr(mine, name):
                raise ValueError(
                    f"{self.final_dir}: cannot append: {name} is {getattr(existing, name)} there, "
                    f"{getattr(mine, name)} here"
                )
        existing.preprocessing.setdefault("appended", []).append(mine.preprocessing)
        self.manifest = existing
        self._dir = self.final_dir

    def add(self, image: np.ndarray, mask: np.ndarray, record: SampleRecord) -> None:
        """Store one sample; shapes are checked against the client's sizes and classes."""
        assert self._dir is not None, "use ClientWriter as a context manager"
        m = self.manifest
        if image.ndim != 3 or image.shape[0] not in (1, 3) or image.shape[1:] != (m.image_size, m.image_size):
            raise ValueError(f"{record.source}: image of shape {image.shape}, expected (1|3, {m.image_size}, {m.image_size})")
        if mask.shape != (m.num_classes, m.mask_size, m.mask_size):
            raise ValueError(f"{record.source}: mask of shape {mask.shape}, expected {(m.num_classes, m.mask_size, m.mask_size)}")
        image_path = self._dir / IMAGES_DIR / f"{record.id}.npy"
        if image_path.exists() or any(r.id == record.id for r in self._new):
            raise ValueError(f"{record.source}: sample id {record.id!r} already used in client {m.client!r}")
        np.save(image_path, np.ascontiguousarray(to_uint8(image)))
        np.save(self._dir / MASKS_DIR / f"{record.id}.npy", np.ascontiguousarray(mask, dtype=np.uint8))
        self._new.append(record)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._dir is not None
        if exc_type is not None:
            self._discard()
            return
        self.manifest = self.manifest.model_copy(update={"samples": [*self.manifest.samples, *self._new]})
        atomic_write_text(self._dir / MANIFEST_NAME, self.manifest.model_dump_json(indent=1))
        if self._dir != self.final_dir:
            self._publish()

    def _discard(self) -> None:
        if self._dir == self.final_dir:
            for record in self._new:
                for sub in (IMAGES_DIR, MASKS_DIR):
                    (self._dir / sub / f"{record.id}.npy").unlink(missing_ok=True)
        else:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _publish(self) -> None:
        assert self._dir is not None
        old = None
        if self.final_dir.exists():
            old = self.out_root / f".{self.final_dir.name}.old-{os.getpid()}"
            os.replace(self.final_dir, old)
        os.replace(self._dir, self.final_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
