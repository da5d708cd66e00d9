"""Measured federated rounds for ``fedfms efficiency --measured-rounds N``: a short real run of
fedfms in Flower's simulation runtime, beside Table 2's extrapolated figures.

A synthetic federation (``clients`` sites of ``samples`` images each, one site's tenth for
validation) trains ``rounds`` rounds of the configuration with fedfms' own server loop and
ClientApp (one local epoch, every client evaluated each round). Reported from the run's own log
(``metrics.jsonl``): wall seconds per round (first round apart: it includes building the model
in the ClientApp), each client's training seconds, and the bytes each client downloads and
uploads per round as the messages carried them. Memory is sampled every 0.1 s while the run
lasts: the peak resident set size of this process and all its descendants together (the
simulation's Ray workers included) and of the largest single process; with CUDA, the peak of the
device's used memory (``torch.cuda.mem_get_info``, every process on it) above what was in use
before the run.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
from pathlib import Path
from typing import Any

from fedfms.config import ModelConfig

_MIB = 2**20


class MemorySampler:
    """Peak RSS of this process tree (sum and largest process) and, with CUDA, peak device
    memory in use above the start, sampled every ``interval`` seconds in a thread."""

    def __init__(self, cuda: bool, interval: float = 0.1) -> None:
        import psutil

        self.process = psutil.Process()
        self.cuda = cuda
        self.interval = interval
        self.peak_tree = self.peak_process = self.peak_cuda = 0
        self.cuda_start = self._cuda_used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _cuda_used(self) -> int:
        if not self.cuda:
            return 0
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def _sample(self) -> None:
        import psutil

        sizes = []
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                sizes.append(process.memory_info().rss)
            except psutil.Error:  # a worker that just ended
                continue
        self.peak_tree = max(self.peak_tree, sum(sizes))
        self.peak_process = max(self.peak_process, max(sizes, default=0))
        self.peak_cuda = max(self.peak_cuda, self._cuda_used() - self.cuda_start)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def measure_rounds(cfg: ModelConfig, rounds: int, clients: int, samples: int, batch_size: int, device: str,
                   precision: str, workdir: Path | None = None) -> dict[str, Any]:
    """Run ``rounds`` real simulated rounds of ``cfg`` (module docstring) in a temporary folder
    (or ``workdir``); returns flat JSON-ready figures."""
    from fedfms.config import DataConfig, FederationConfig, RunConfig, SimulationConfig, TrainConfig
    from fedfms.data import make_synthetic_federation
    from fedfms.federated.simulation import simulate
    from fedfms.run.log import read_rows
    from fedfms.train.device import resolve_device

    cuda = resolve_device(device).type == "cuda"
    with tempfile.TemporaryDirectory(prefix="fedfms-rounds-", dir=workdir) as tmp:
        root = Path(tmp)
        make_synthetic_federation(root / "data", num_clients=clients, num_classes=min(cfg.num_classes, 2),
                                  image_size=cfg.image_size, mask_size=cfg.mask_size,
                                  samples_per_client=(samples,) * clients, seed=0)
        config = RunConfig(
            name="efficiency-rounds", output_dir=root / "run",
            model=cfg.model_copy(update={"num_classes": min(cfg.num_classes, 2)}),
            data=DataConfig(root=root / "data"),
            train=TrainConfig(batch_size=batch_size, device=device, precision=precision,
                              state_dir=root / "state", embedding_cache=root / "embeddings"),
            federation=FederationConfig(rounds=rounds),
            simulation=SimulationConfig(gpus_per_client=1.0 if cuda else 0.0),
        )
        with MemorySampler(cuda) as memory:
            simulate(config)
        rows = read_rows(config.output_dir)
    train = [r for r in rows if r["kind"] == "train"]
    seconds = [r["seconds"] for r in rows if r["kind"] == "round"]
    later = seconds[1:] or seconds
    return {
        "measured_rounds": rounds,
        "measured_clients": clients,
        "measured_samples_per_client": samples,
        "round_seconds_each": seconds,
        "measured_round_seconds": statistics.median(later),
        "client_train_seconds": statistics.median(r["seconds"] for r in train if r["round"] > 1 or rounds == 1),
        "client_train_images": max(r["samples"] for r in train),
        "download_bytes_per_client": max(r["bytes_sent"] for r in train),
        "upload_bytes_per_client": max(r["bytes_received"] for r in train),
        "peak_rss_tree_mib": memory.peak_tree / _MIB,
        "peak_rss_process_mib": memory.peak_process / _MIB,
        "peak_cuda_used_mib": memory.peak_cuda / _MIB if cuda else None,
    }
