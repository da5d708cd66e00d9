"""Stopping a simulated run cleanly on Ctrl-C (SIGINT) or SIGTERM.

Flower's simulation runtime keeps running when the driver gets SIGINT, and Ray's helper
processes (raylet, GCS, dashboard and runtime-env agents) can outlive it. While a run is inside
:func:`stop_cleanly`, either signal says which round is safely on disk and how to continue,
ends every process the run started (children first asked, then killed), and exits with
``128 + signal``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import psutil

from fedfms.run.state import LATEST

logger = logging.getLogger("fedfms")
GRACE_SECONDS = 3.0


def last_saved_round(run_dir: Path) -> str:
    """The newest complete round folder of ``run_dir``, or ``none``."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    return pointer.read_text().strip() if pointer.exists() else "none"


def end_descendants(grace: float = GRACE_SECONDS) -> int:
    """Terminate every descendant process of this one, kill those still alive after ``grace``
    seconds; returns how many there were."""
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=grace)
    return len(children)


@contextlib.contextmanager
def stop_cleanly(run_dir: Path) -> Iterator[None]:
    """Within this block SIGINT/SIGTERM end the run as the module docstring says."""

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.warning("interrupted (%s): stopping the run's processes", signal.Signals(signum).name)
        logging.getLogger("flwr").disabled = True  # its errors about the actors ended here are expected
        stopped = end_descendants()
        logger.warning("stopped %d helper process(es); the last complete round on disk is %s in %s; run the "
                       "same command with --resume to continue (fedfms experiment and fedfms demo resume by "
                       "themselves)", stopped, last_saved_round(run_dir), Path(run_dir) / "checkpoints")
        logging.shutdown()
        os._exit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
