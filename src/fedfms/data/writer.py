"""Atomic writing of prepared client folders.

New client: everything goes into a hidden temporary sibling ``.<client>.tmp-XXXX`` which is renamed
to ``<client>`` only when the whole preparation succeeded, so a failure leaves no half-written
client and keeps an existing one (replaced only with ``overwrite=True``, after success) intact.

Append: sample files are written first under ids not yet used, then the manifest is replaced
atomically (``os.replace``); on failure the new sample files are removed and the manifest is
untouched, so readers never see a sample that is not complete.

A killed preparation cannot clean up after itself; the next one into the same folder does, on
its own: one preparation at a time writes into a folder of clients (an exclusive lock on the
folder, released by the kernel when its holder dies), so whatever the lock's new holder finds
is a leftover: hidden ``.<client>.tmp-*`` / ``.<client>.old-*`` folders are removed (a client
caught between the two renames of a replacement gets its previous version back), and sample
files of the client it writes that its manifest does not list (a killed ``--append``) are
deleted. Each recovery is logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
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
    ManifestError,
    SampleRecord,
    read_manifest,
)
from fedfms.errors import FedfmsError
from fedfms.io import atomic_write_text, output_folder, umask

logger = logging.getLogger("fedfms")
_LEFTOVER = re.compile(r"^\.(?P<client>.+)\.(?P<kind>tmp|old)-[A-Za-z0-9_]+$")  # see _open and _publish

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
        self._lock: int | None = None
        self._made_root = False

    @property
    def samples_written(self) -> int:
        return len(self._new)

    def __enter__(self) -> ClientWriter:
        self._made_root = not self.out_root.exists()
        self._lock = lock_folder(output_folder(self.out_root))
        try:
            self._open()
        except BaseException:
            self._unlock()
            raise
        return self

    def _open(self) -> None:
        recover_client(self.out_root, self.final_dir.name)
        exists = (self.final_dir / MANIFEST_NAME).is_file()
        if self.mode == "append" and exists:
            self._open_for_append()
        elif exists and self.mode == "create":
            raise ClientExistsError(f"{self.final_dir}: client folder exists (use overwrite or append)")
        elif self.final_dir.exists() and not exists and any(self.final_dir.iterdir()):
            raise ClientExistsError(f"{self.final_dir}: exists and is not a prepared client folder")
        else:
            self._dir = Path(tempfile.mkdtemp(prefix=f".{self.final_dir.name}.tmp-", dir=self.out_root))
            self._dir.chmod(0o777 & ~umask())  # mkdtemp makes 0700; a client folder is an ordinary folder
        (self._dir / IMAGES_DIR).mkdir(exist_ok=True)
        (self._dir / MASKS_DIR).mkdir(exist_ok=True)

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

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
        try:
            if exc_type is not None:
                self._discard()
                return
            self.manifest = self.manifest.model_copy(update={"samples": [*self.manifest.samples, *self._new]})
            atomic_write_text(self._dir / MANIFEST_NAME, self.manifest.model_dump_json(indent=1))
            if self._dir != self.final_dir:
                self._publish()
        finally:
            self._unlock()
            if exc_type is not None and self._made_root:
                with contextlib.suppress(OSError):  # a preparation that wrote nothing leaves no empty folder
                    self.out_root.rmdir()

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


def lock_folder(folder: Path) -> int:
    """Hold an exclusive lock on ``folder`` (waiting for another preparation writing into it);
    returns the descriptor whose closing releases it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.warning("%s: another fedfms prepare is writing into this folder; waiting for it to end", folder)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def recover_client(out_root: Path, client: str) -> list[str]:
    """Undo what killed preparations left in ``out_root`` (the caller holds the folder's lock,
    so nobody else is writing it): every client's hidden temporaries, a client caught between
    the two renames of its replacement, and the sample files of ``client`` that its manifest
    does not list. Returns what was done, also logged."""
    done: list[str] = []
    leftovers = sorted(p for p in out_root.iterdir() if _LEFTOVER.match(p.name))
    for old in (p for p in leftovers if _LEFTOVER.match(p.name)["kind"] == "old"):
        final = out_root / _LEFTOVER.match(old.name)["client"]
        if not final.exists():
            os.replace(old, final)
            done.append(f"restored {final} from {old.name} (killed while replacing it)")
    for leftover in (p for p in leftovers if p.exists()):
        shutil.rmtree(leftover, ignore_errors=True)
        done.append(f"removed {leftover.name}")
    final = out_root / client
    with contextlib.suppress(ManifestError):  # no client yet, or one that stops the preparation later
        listed = {r.id for r in read_manifest(final).samples}
        for sub in (IMAGES_DIR, MASKS_DIR):
            for stray in sorted((final / sub).glob("*.npy")):
                if stray.stem not in listed:
                    stray.unlink()
                    done.append(f"deleted {final.name}/{sub}/{stray.name}, which {MANIFEST_NAME} does not list")
    for line in done:
        logger.warning("%s: leftover of a killed preparation: %s", out_root, line)
    return done
