"""FedSAM and FedMSA ViT-B at 1024 px, batch 6, on one CUDA GPU: peak memory, step time and
model FLOP utilisation of fedfms' training step (the paper's Table 2 setting; issue 13 item 5).

Usage (one GPU, about 3 minutes on an H100/H200):

    PYTHONPATH=src python benchmarks/gpu_vit_b_1024.py [--steps 5] [--peak-tflops 989] [--out gpu.json]

Per mode and per setting (bf16 autocast with and without gradient checkpointing), in a fresh
model each: ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` over warm-up and
timed steps (weights, gradients, Adam state, activations), median seconds per step of
:class:`fedfms.train.step.TrainStep` (fused Adam over the trained parameters) after 2 warm-up
steps, and MFU = model FLOPs per step (forward + backward of 6 images, counted once with
``torch.utils.flop_counter``; gradient checkpointing's recomputation is not counted) / step time
/ the GPU's dense bf16 peak. The paper (A800, fp32): FedSAM 58,478 MiB, FedMSA 52,274 MiB;
issue 13's goal with mixed precision and checkpointing: <= 20,000 / 16,000 MiB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from fedfms.benchmarks.efficiency import PAPER_TABLE2, count_train_flops, random_samples
from fedfms.config import ModelConfig, TrainConfig
from fedfms.models import build_model
from fedfms.train.step import TrainStep

#: Dense bf16 tensor-core peak (TFLOP/s) by device-name fragment, from the vendors' data sheets.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L4": 121.0}
GOAL_MIB = {"sam": 20_000, "msa": 16_000}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override is not None:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def measure(mode: str, checkpointing: bool, steps: int, batch_size: int, device: torch.device) -> dict:
    cfg = ModelConfig(backbone="vit_b", mode=mode, image_size=1024, num_classes=2, pretrained=False)
    model = build_model(cfg, seed=0).to(device)
    flops = count_train_flops(model, cfg, device) * batch_size
    samples = random_samples(cfg, batch_size)
    batch = {"image": torch.stack([s["image"] for s in samples]).to(device),
             "mask": torch.stack([s["mask"] for s in samples]).to(device)}
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step = TrainStep(model, TrainConfig(precision="bf16", gradient_checkpointing=checkpointing), cfg.num_classes, device)
    seconds = []
    for i in range(steps + 2):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(batch)
        torch.cuda.synchronize(device)
        if i >= 2:
            seconds.append(time.perf_counter() - start)
    result = {
        "mode": mode, "gradient_checkpointing": checkpointing, "batch_size": batch_size, "precision": "bf16",
        "peak_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20,
        "peak_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20,
        "step_seconds_median": statistics.median(seconds), "step_seconds_min": min(seconds),
        "model_tflops_per_step": flops / 1e12,
        "paper_memory_mib": PAPER_TABLE2[mode].memory_mib, "goal_memory_mib": GOAL_MIB[mode],
    }
    del step, model
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (TFLOP/s)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this script measures the GPU setting only")
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    peak = peak_tflops(name, args.peak_tflops)
    rows = []
    for mode in ("sam", "msa"):
        for checkpointing in (True, False):
            row = measure(mode, checkpointing, args.steps, args.batch_size, device)
            row["mfu"] = row["model_tflops_per_step"] / row["step_seconds_median"] / peak if peak else None
            rows.append(row)
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a (unknown peak; --peak-tflops)"
            print(f"{mode} checkpointing={checkpointing}: {row['peak_allocated_mib']:,.0f} MiB allocated "
                  f"({row['peak_reserved_mib']:,.0f} reserved; paper {row['paper_memory_mib']:,.0f}, goal "
                  f"<= {row['goal_memory_mib']:,}), {row['step_seconds_median']:.3f} s/step, "
                  f"{row['model_tflops_per_step']:.1f} TFLOPs/step, MFU {mfu}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "peak_bf16_tflops": peak,
                                        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
