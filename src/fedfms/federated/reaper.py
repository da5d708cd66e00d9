"""Nothing a simulated run starts outlives it, not even after a SIGKILL.

Ray's helpers are not all children of the run: its DashboardAgent and RuntimeEnvAgent are
started by the raylet, and when the run is killed outright (SIGKILL, the OOM killer) they are
handed to init and keep running; Ray's own parent checks do not end them. So, while a run is
inside :func:`reaped`, a small watchdog process, in a session of its own, notes every
descendant of the run once a second and waits on a pipe whose other end only the run holds.
When the run ends in any way the pipe closes, and the watchdog kills every process it noted
that still runs (the same process: pid and start time).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil

POLL_S = 1.0


@contextlib.contextmanager
def reaped() -> Iterator[None]:
    """Within this block, the processes this one starts are killed when it ends, however it ends."""
    read_end, write_end = os.pipe()  # not inherited by the processes the run starts (PEP 446)
    watchdog = subprocess.Popen([sys.executable, "-m", "fedfms.federated.reaper", str(os.getpid())],
                                stdin=read_end, start_new_session=True)
    os.close(read_end)
    try:
        yield
    finally:
        os.close(write_end)  # as a kill would: the watchdog reaps what is left, then exits
        watchdog.wait()


def _ended(fd: int, wait: float) -> bool:
    """Whether the pipe's writing end has closed (waits up to ``wait`` seconds to find out)."""
    readable, _, _ = select.select([fd], [], [], wait)
    return bool(readable) and not os.read(fd, 1)


def _note_descendants(parent: int, known: dict[int, float]) -> None:
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(parent).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                known.setdefault(child.pid, child.create_time())


def kill_noted(known: dict[int, float]) -> int:
    """SIGKILL the noted processes that still run (not a later process with a reused pid);
    returns how many there were."""
    victims = []
    for pid, started in known.items():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.create_time() == started and pid != os.getpid():
                process.kill()
                victims.append(process)
    psutil.wait_procs(victims, timeout=5)
    return len(victims)


def _watch(parent: int) -> None:
    """The watchdog: note the run's descendants until the run's end of the pipe closes, then
    kill those left."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run; this process ends after it
    known: dict[int, float] = {}
    while not _ended(sys.stdin.fileno(), POLL_S):
        _note_descendants(parent, known)
    kill_noted(known)


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
