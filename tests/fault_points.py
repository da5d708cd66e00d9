"""Runs a ``fedfms`` command and SIGKILLs it at a named point, as a power cut or the OOM killer
would: ``python tests/fault_points.py POINT fedfms-args...``. A point wraps one function and
kills the process on the call that matches; the process then dies with SIGKILL, no cleanup.
If the point is never reached the command ends normally (the caller checks it was killed).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _nth(n: int) -> Callable[[int, tuple], bool]:
    return lambda count, args: count == n


# name -> (module, attribute, whether the count-th call with these args is the kill point)
POINTS: dict[str, tuple[str, str, Callable[[int, tuple], bool]]] = {
    # prepare: after the first sample's two arrays, before the second sample's image
    "prepare-second-sample": ("numpy", "save", _nth(3)),
    # prepare --overwrite: the old client renamed away, the new one not yet in its place
    # (1st os.replace: the manifest; 2nd: client -> .old; 3rd: temporary -> client)
    "prepare-between-replace-renames": ("os", "replace", _nth(3)),
    # training: inside round 2, before its epoch
    "train-round-2": ("fedfms.train.rounds", "train_epoch", _nth(2)),
    # checkpoint of round 2: its first tensor file (round 1 wrote 4: its folder and best/)
    "checkpoint-round-2": ("fedfms.run.state", "save_file", _nth(5)),
    # best swap: best/ renamed to .best-old, the new best not yet renamed into place
    "best-swap": ("pathlib", "Path.rename",
                  lambda count, args: Path(args[1]).name == "best" and Path(args[1]).with_name(".best-old").exists()),
}


def arm(point: str) -> None:
    """Wrap the point's function so that the matching call kills this process."""
    module_name, attribute, matches = POINTS[point]
    owner = importlib.import_module(module_name)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    def trap(*args, **kwargs):
        calls[0] += 1
        if matches(calls[0], args):
            _kill()
        return original(*args, **kwargs)

    setattr(owner, name, trap)


if __name__ == "__main__":
    arm(sys.argv[1])
    sys.argv = ["fedfms", *sys.argv[2:]]
    from fedfms.cli import main

    main()
