"""Stopping a simulated run cleanly on Ctrl-C (SIGINT) or SIGTERM.

Flower's simulation runtime keeps running when the driver gets SIGINT, and Ray's helper
processes (raylet, GCS, dashboard and runtime-env agents, actors) can outlive it. While a run is
inside :func:`stop_cleanly`, either signal says which round is safely on disk and how to
continue and exits with ``128 + signal`` at once; the run's reaper (:mod:`fedfms.federated.reaper`,
a process of its own) then kills every process the run started. The run does not stop or kill
its helpers itself: once Ray's raylet or GCS is gone, Ray's own watchdog thread in this process
ends it with status 1, and it did so while this process was still killing the rest (in one CI
run, a SIGTERM to the whole process group, as systemd and ``timeout`` send, exited with 1).

Ray's start-up (inside Flower's ``run_simulation``) replaces the SIGTERM handler twice: with
Python's ``sys.exit`` and then with its C++ failure handler, which dumps a stack and aborts
(exit 134) with no word of the saved round; so the handlers are installed again right after
Ray's start-up, through Ray's post-init hooks (Ray 2's ``ray._private.worker._post_init_hooks``,
the only place that runs in the main thread after ``ray.init`` and before any round).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from fedfms.run.state import LATEST

logger = logging.getLogger("fedfms")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def last_saved_round(run_dir: Path) -> str:
    """The newest complete round folder of ``run_dir``, or ``none``."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    return pointer.read_text().strip() if pointer.exists() else "none"


@contextlib.contextmanager
def stop_cleanly(run_dir: Path) -> Iterator[None]:
    """Within this block SIGINT/SIGTERM end the run as the module docstring says; use it inside
    :func:`fedfms.federated.reaper.reaped`, which stops the run's helpers."""

    def stop(signum: int, frame: FrameType | None) -> None:
        logger.warning("interrupted (%s): the run's helper processes are being stopped; the last complete round on "
                       "disk is %s in %s; run the same command with --resume to continue (fedfms experiment and "
                       "fedfms demo resume by themselves)", signal.Signals(signum).name,
                       last_saved_round(run_dir), Path(run_dir) / "checkpoints")
        logging.shutdown()
        os._exit(128 + signum)

    def install() -> None:
        for sig in SIGNALS:
            signal.signal(sig, stop)

    from ray._private import worker as ray_worker  # imported here: the module is light without Ray

    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    install()
    ray_worker._post_init_hooks.append(install)  # Ray's start-up takes SIGTERM over; take it back
    try:
        yield
    finally:
        ray_worker._post_init_hooks.remove(install)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
