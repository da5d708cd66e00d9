"""Files written whole or not at all: a temporary file in the target's folder, flushed and
fsynced, then renamed over the target (``os.replace`` is atomic on POSIX), so a kill or a full
disk never leaves a half-written file under the real name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace ``path`` with what ``write(stream)`` writes into a binary stream; the
    file gets the user's usual permissions (``0o666`` less the umask), not the temporary's 0600."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Create or replace ``path`` with ``text`` (UTF-8), atomically."""
    atomic_write(path, lambda handle: handle.write(text.encode()))
