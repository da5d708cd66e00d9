"""Files written whole or not at all: a temporary file in the target's folder, flushed and
fsynced, then renamed over the target (``os.replace`` is atomic on POSIX), so a kill or a full
disk never leaves a half-written file under the real name. Output folders are checked before
work starts, and a failed write is one line naming the path (:func:`describe`)."""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fedfms.errors import FedfmsError


class OutputError(FedfmsError, OSError):
    """An output path that cannot be written: a file where a folder is needed, no permission,
    a read-only file system, a full disk."""


def describe(err: OSError, path: Path | None = None) -> str:
    """One line for a failed file operation: the path and what went wrong."""
    where = err.filename or path or "a file"
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{where}: a file is in the way where a folder is needed"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: the disk is full"
    return f"{where}: {(err.strerror or str(err)).lower()}"


def output_folder(path: Path) -> Path:
    """Create the folder ``path`` if needed and check that a file can be written into it, so
    that a wrong output path fails before any work starts (:class:`OutputError`)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"0")
            probe.flush()
    except OSError as err:
        raise OutputError(f"cannot write the output folder: {describe(err, path)}") from None
    return path


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


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's content (hex), read in chunks. Checkpoints store it beside their
    tensor files and compare it on load: damage on disk or in a copy (a flipped block, a
    truncated transfer) is refused instead of loaded as weights. It detects accidents, not an
    attacker who can write the folder (who can rewrite the digest too)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
