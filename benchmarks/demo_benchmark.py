"""Wall time and peak memory of the README's main job, ``fedfms demo``, from scratch.

Runs the demo in a fresh temporary folder (synthetic data, the embedding caches and every run
made anew) as a child process and prints one line: wall seconds, the child's peak RSS, the
number of CPU cores, and the unseen site's Dice of each row. The target is at most 600 s on
2 CPU cores.

    python benchmarks/demo_benchmark.py                 # the default: pretrained LiteMedSAM
    python benchmarks/demo_benchmark.py -- --backbone tiny
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(extra: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="fedfms-demo-") as folder:
        out = Path(folder) / "demo"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fedfms.cli", "demo", "--out", str(out), *extra],
                       check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        results = json.loads((out / "results.json").read_text())
    unseen = {label: r["clients"][r["unseen"]]["dice"] for label, r in results.items()}
    scores = ", ".join(f"{label} {dice:.3f}" for label, dice in unseen.items())
    print(f"fedfms demo {' '.join(extra)}: {seconds:.0f} s wall, peak RSS {peak_mib:,.0f} MiB "
          f"(largest process), {os.cpu_count()} CPU cores; unseen-site Dice: {scores}")


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if a != "--"])
