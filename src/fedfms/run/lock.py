"""One run at a time in a run folder: a run holds an exclusive lock (``flock``) on
``RUN_DIR/.fedfms.lock`` for its whole life, with its pid written in the file. A second run
into the same folder is refused at once, naming the folder and the holder's pid, before it
writes anything; two runs' rounds, checkpoints and best model would otherwise interleave.
The kernel drops the lock when the holder ends in any way (a SIGKILL included), so a stale
file never blocks the next run; it stays in the folder, harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from fedfms.errors import FedfmsError
from fedfms.io import output_folder

LOCK = ".fedfms.lock"


class RunFolderBusy(FedfmsError):
    """Another run holds the run folder."""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Create ``run_dir`` if needed (:func:`fedfms.io.output_folder`) and hold it for this block;
    :class:`RunFolderBusy` if another run holds it."""
    run_dir = output_folder(run_dir)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderBusy(f"{run_dir}: another run is writing into this folder (pid {holder}); wait for it to "
                            "end or choose another output folder") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield run_dir
    finally:
        os.close(fd)  # drops the lock
