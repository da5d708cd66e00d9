"""``fedfms efficiency``: the paper's Table 2 (model efficiency) measured for any model.

Per configuration (arch, backbone, mode, image size) on one device, with random weights (weights
do not change the cost):

* learnable parameters and the bytes one client sends per round, measured from the message
  itself: ``to_record(trainable_state(model)).count_bytes()`` (the server sends as much back);
* training time per optimizer step (batch ``B`` of ``(B, 3, S, S)`` images, the real local
  training loop :func:`fedfms.train.local.train_epoch`, after one warm-up step; in ``decoder``
  mode, as real runs train, on cached image embeddings, with the one-off cost of running the
  frozen encoder once per image measured apart and added once per client) and per round
  (``ceil(samples / B)`` steps, one local epoch), and the paper's total: rounds x training
  clients x round time, as the reference code trains its clients one after another;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (weights, gradients, Adam state,
  activations); on CPU the process's peak resident set size. Both come with the increase the
  training steps caused (peak minus what was in use before them);
* FLOPs of forward + backward of one image (``torch.utils.flop_counter``; attention is run with
  the math kernel while counting, so fused attention kernels are counted too);
* prediction time per image (eval, no grad, batch 1, mean over a few images after a warm-up);
* with ``--measured-rounds N``, a short real federated run beside these extrapolations
  (:mod:`fedfms.benchmarks.rounds`: seconds per round, bytes per client, peak memory).

The peak memory of a process only grows, so :func:`run_efficiency` measures every configuration
in a fresh process.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Annotated, Any

import typer

from fedfms.config import Architecture, Backbone, ModelConfig

_MIB = 2**20

#: Training samples per client per round by default: the training split (9/10) of the mean
#: public size of the paper's four fundus sets (REFUGE 1200, ORIGA 650, G1020 1020,
#: Drishti-GS1 101 images: mean 743). The paper's own counts are in its Figure 2 only.
FUNDUS_SAMPLES_PER_CLIENT = 669


@dataclass(frozen=True)
class PaperFigures:
    """One column pair of the paper's Table 2 (A800 GPU, fundus, ViT-B, 1024 px, batch 6,
    100 rounds). The learnable count of FedMSA includes the reference code's 3D-only adapters."""

    learnable_params: float
    training_minutes: float
    memory_mib: float
    tflops: float
    predict_seconds: float


PAPER_TABLE2: dict[str, PaperFigures] = {
    "msa": PaperFigures(14.7e6, 739.9, 52_274, 5.7, 0.127),
    "sam": PaperFigures(93.7e6, 911.4, 58_478, 13.4, 0.118),
}
PAPER_SETTING = {"arch": "sam", "backbone": "vit_b", "image_size": 1024, "batch_size": 6, "rounds": 100}
MODE_NAMES = {"sam": "FedSAM", "msa": "FedMSA", "lora": "FedLoRA", "decoder": "FedDecoder"}


def model_label(cfg: ModelConfig) -> str:
    """``FedMSA (vit_b)``, ``FedU-Net``: the row name of a configuration."""
    if cfg.arch != "sam":
        return {"unet": "FedU-Net", "nnunet": "FednnU-Net"}[cfg.arch]
    return f"{MODE_NAMES[cfg.mode]} ({cfg.backbone})"


def _rss_now_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return _rss_peak_bytes()
    return pages * resource.getpagesize()


def _rss_peak_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_samples(cfg: ModelConfig, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` items shaped like :class:`~fedfms.data.ClientDataset` ones: image
    ``(3, S, S)`` uniform in [0, 1], mask ``(C, M, M)`` in {0, 1}, each its own case."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    size, side = cfg.image_size, cfg.mask_size
    return [
        {
            "image": torch.rand(3, size, size, generator=generator),
            "mask": (torch.rand(cfg.num_classes, side, side, generator=generator) > 0.5).float(),
            "id": f"random-{i}",
            "case": f"random-{i}",
        }
        for i in range(count)
    ]


def count_train_flops(model: Any, cfg: ModelConfig, device: Any) -> int:
    """FLOPs of forward + backward (loss: the training BCE) for one ``(1, 3, S, S)`` image."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from fedfms.train.losses import bce_loss

    sample = random_samples(cfg, 1)[0]
    image, mask = sample["image"][None].to(device), sample["mask"][None].to(device)
    loss_fn = bce_loss(cfg.num_classes, 2.0).to(device)
    counter = FlopCounterMode(display=False)
    model.train()
    with sdpa_kernel(SDPBackend.MATH), counter:
        loss_fn(model(image), mask).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def time_prediction(model: Any, cfg: ModelConfig, device: Any, images: int, precision: str = "auto") -> float:
    """Mean seconds to predict one ``(1, 3, S, S)`` image (eval, no grad), after one warm-up."""
    import torch

    from fedfms.train.device import autocast, resolve_precision

    dtype = resolve_precision(precision, device)
    batch = [s["image"][None].to(device) for s in random_samples(cfg, images + 1, seed=1)]
    model.eval()
    seconds = []
    with torch.inference_mode(), autocast(device, dtype):
        for image in batch:
            _synchronize(device)
            start = time.perf_counter()
            model(image)
            _synchronize(device)
            seconds.append(time.perf_counter() - start)
    model.train()
    return sum(seconds[1:]) / images


def embed_samples(model: Any, samples: list[dict[str, Any]], device: Any, precision: str = "auto"
                  ) -> tuple[list[dict[str, Any]], float]:
    """What a ``decoder``-mode run trains on: ``samples`` with each image replaced by its
    embedding under the frozen encoder (``(256, h, w)``, batches of 4, as
    :mod:`fedfms.train.embeddings` computes them once per image), and the seconds per image
    that took."""
    import torch

    from fedfms.train.device import autocast, resolve_precision

    dtype = resolve_precision(precision, device)
    model.eval()
    embedded = []
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device, dtype):
        for first in range(0, len(samples), 4):
            chunk = samples[first : first + 4]
            embeddings = model.embed(torch.stack([s["image"] for s in chunk]).to(device)).float().cpu()
            embedded += [{"embedding": e.clone(), "mask": s["mask"], "id": s["id"], "case": s["case"]}
                         for e, s in zip(embeddings, chunk)]
    _synchronize(device)
    seconds = (time.perf_counter() - start) / len(samples)
    model.train()
    return embedded, seconds


def measure_efficiency(
    cfg: ModelConfig,
    batch_size: int,
    device: str,
    steps: int,
    samples_per_round: int = FUNDUS_SAMPLES_PER_CLIENT,
    predict_images: int = 3,
    precision: str = "auto",
    gradient_checkpointing: bool = False,
) -> dict[str, Any]:
    """Measure one configuration (see the module docstring) in this process.

    ``steps`` timed training steps of ``batch_size`` images follow one warm-up step. Memory is
    the process's peak, so call this in a fresh process for figures that only this model caused
    (:func:`run_efficiency` does). Returns a flat JSON-ready dict.
    """
    import torch

    from fedfms.config import TrainConfig
    from fedfms.federated.wire import to_record
    from fedfms.models import build_model, trainable_state
    from fedfms.train.device import resolve_device, resolve_precision
    from fedfms.train.local import make_loader, train_epoch

    if batch_size < 1 or steps < 1 or predict_images < 1 or samples_per_round < 1:
        raise ValueError("batch_size, steps, predict_images and samples_per_round must be >= 1")
    dev = resolve_device(device)
    model = build_model(cfg, seed=0)
    state = trainable_state(model)
    bytes_up = to_record(state).count_bytes()
    model.to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        memory_before = torch.cuda.memory_allocated(dev)
    else:
        memory_before = _rss_now_bytes()
    samples = random_samples(cfg, batch_size * steps)
    cached = cfg.arch == "sam" and cfg.mode == "decoder"  # the frozen encoder runs once per image, not per step
    embed_seconds = None
    if cached:
        samples, embed_seconds = embed_samples(model, samples, dev, precision)
    loader = make_loader(samples, batch_size, shuffle=False, seed=0)
    train_cfg = TrainConfig(batch_size=batch_size, precision=precision, gradient_checkpointing=gradient_checkpointing)
    warm = train_cfg.model_copy(update={"max_steps_per_epoch": 1})
    train_epoch(model, loader, warm, cfg.num_classes, dev, desc="warm-up")
    timed = train_epoch(model, loader, train_cfg, cfg.num_classes, dev, desc="timed steps")
    memory_peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _rss_peak_bytes()
    step_seconds = timed.seconds / timed.steps
    steps_per_round = math.ceil(samples_per_round / batch_size)
    return {
        "model": model_label(cfg) + (" + gradient checkpointing" if gradient_checkpointing else ""),
        "arch": cfg.arch,
        "backbone": cfg.backbone,
        "mode": cfg.mode,
        "image_size": cfg.image_size,
        "num_classes": cfg.num_classes,
        "batch_size": batch_size,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": str(resolve_precision(precision, dev)).removeprefix("torch."),
        "gradient_checkpointing": gradient_checkpointing,
        "total_params": sum(p.numel() for p in model.parameters()),
        "learnable_params": sum(t.numel() for t in state.values()),
        "bytes_up_per_round": bytes_up,
        "bytes_up_down_per_round": 2 * bytes_up,
        "trained_on": "cached embeddings" if cached else "images",
        "embedding_seconds_per_image": embed_seconds,
        "train_step_seconds": step_seconds,
        "timed_steps": timed.steps,
        "samples_per_round": samples_per_round,
        "round_seconds": step_seconds * steps_per_round,
        "memory": "cuda max_memory_allocated" if dev.type == "cuda" else "process peak RSS",
        "peak_memory_mib": memory_peak / _MIB,
        "train_memory_increase_mib": max(memory_peak - memory_before, 0) / _MIB,
        "train_flops_per_image": count_train_flops(model, cfg, dev),
        "predict_seconds_per_image": time_prediction(model, cfg, dev, predict_images, precision),
    }


def _call(isolate: bool, function: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``function(*args, **kwargs)``, in a fresh spawned process when ``isolate``."""
    if not isolate:
        return function(*args, **kwargs)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


def run_efficiency(
    configs: Sequence[ModelConfig],
    isolate: bool = True,
    progress: Callable[[str], None] = print,
    measured: dict[str, Any] | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """:func:`measure_efficiency` of each configuration (``options`` are its keyword arguments),
    each in a fresh spawned process unless ``isolate`` is False; with ``measured`` (keyword
    arguments of :func:`fedfms.benchmarks.rounds.measure_rounds` but the configuration) also a
    short real simulated run, in a process of its own. ``progress`` gets a line before and
    after each measurement."""
    from fedfms.benchmarks.rounds import measure_rounds

    results = []
    for i, cfg in enumerate(configs, 1):
        progress(f"[{i}/{len(configs)}] {model_label(cfg)}, {cfg.image_size} px ...")
        start = time.perf_counter()
        result = _call(isolate, measure_efficiency, cfg, **options)
        result["wall_seconds"] = time.perf_counter() - start
        results.append(result)
        progress(
            f"    {result['learnable_params'] / 1e6:.2f}M learnable, {result['train_step_seconds']:.2f} s/step"
            f"{_embedding_note(result)}, "
            f"{result['peak_memory_mib']:,.0f} MiB peak, {result['train_flops_per_image'] / 1e12:.3g} TFLOPs, "
            f"{result['predict_seconds_per_image']:.3f} s/image ({result['wall_seconds']:.0f} s)"
        )
        if measured:
            result |= _call(isolate, measure_rounds, cfg, **measured)
            progress(f"    measured: {result['measured_round_seconds']:.1f} s/round "
                     f"({result['measured_clients']} clients x {result['measured_samples_per_client']} images), "
                     f"{result['peak_rss_tree_mib']:,.0f} MiB peak RSS (all processes)")
    return results


def _embedding_note(result: dict[str, Any]) -> str:
    seconds = result.get("embedding_seconds_per_image")
    return "" if seconds is None else f" on cached embeddings (+ {seconds:.2f} s per image once for the embedding)"


def one_off_seconds(result: dict[str, Any]) -> float:
    """Seconds a client spends once, before its first round: embedding its images in ``decoder``
    mode (0 otherwise)."""
    return (result.get("embedding_seconds_per_image") or 0.0) * result["samples_per_round"]


def measured_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The measured rounds (:mod:`fedfms.benchmarks.rounds`) beside the extrapolated step time."""
    header = ["Model", "Clients x images", "Measured s / round (median after round 1)", "Round 1 s",
              "Client train s / round", "Extrapolated train s for those images", "MB down / client / round",
              "MB up / client / round", "Peak RSS MiB, all processes", "Peak RSS MiB, largest process",
              "Peak CUDA used MiB", "Predict s / image"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        extrapolated = math.ceil(r["client_train_images"] / r["batch_size"]) * r["train_step_seconds"]
        cuda = "" if r["peak_cuda_used_mib"] is None else f"{r['peak_cuda_used_mib']:,.0f}"
        lines.append("| " + " | ".join([
            r["model"], f"{r['measured_clients']} x {r['measured_samples_per_client']}",
            f"{r['measured_round_seconds']:.1f}", f"{r['round_seconds_each'][0]:.1f}",
            f"{r['client_train_seconds']:.1f}", f"{extrapolated:.1f}",
            f"{r['download_bytes_per_client'] / 1e6:.1f}", f"{r['upload_bytes_per_client'] / 1e6:.1f}",
            f"{r['peak_rss_tree_mib']:,.0f}", f"{r['peak_rss_process_mib']:,.0f}", cuda,
            f"{r['predict_seconds_per_image']:.3f}",
        ]) + " |")
    return ("\n".join(lines) + "\n\n- Measured: a real federated run in Flower's simulation runtime on synthetic "
            "data (fedfms' server loop and ClientApp; each round trains every client one local epoch on its "
            "training split, then evaluates every client). Client train s: the slowest client's training (median "
            "over rounds after the first); extrapolated: step time x steps for as many training images. Peak RSS "
            "of all processes includes the Ray runtime.\n")


def _paper_row(mode: str) -> list[str]:
    paper = PAPER_TABLE2[mode]
    return [
        f"{MODE_NAMES[mode]} (paper, A800)", f"{paper.learnable_params / 1e6:.1f}M", "", "", "", "",
        f"{paper.training_minutes:,.1f}", f"{paper.memory_mib:,.0f}", "", f"{paper.tflops:.1f}",
        f"{paper.predict_seconds:.3f}",
    ]


def _differences(result: dict[str, Any], rounds: int) -> list[str]:
    ours = {**result, "rounds": rounds}
    return [f"{k} {ours[k]} (paper {v})" for k, v in PAPER_SETTING.items() if ours[k] != v]


def efficiency_markdown(results: Sequence[dict[str, Any]], rounds: int, train_clients: int) -> str:
    """Table 2 as Markdown: one row per measured configuration, the paper's FedMSA/FedSAM rows
    under ours for ViT-B SAM models (with the settings that differ from the paper's named)."""
    header = [
        "Model", "Learnable params", "MB up / round", "MB up+down / round", "Train s / step",
        "Train min / round / client", f"Train min, {rounds} rounds x {train_clients} clients",
        "Peak memory MiB", "Step memory increase MiB", "TFLOPs fwd+bwd / image", "Predict s / image",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for r in results:
        total_minutes = train_clients * (rounds * r["round_seconds"] + one_off_seconds(r)) / 60
        row = [
            r["model"], f"{r['learnable_params'] / 1e6:.2f}M", f"{r['bytes_up_per_round'] / 1e6:.1f}",
            f"{r['bytes_up_down_per_round'] / 1e6:.1f}", f"{r['train_step_seconds']:.3f}",
            f"{r['round_seconds'] / 60:.2f}", f"{total_minutes:,.1f}", f"{r['peak_memory_mib']:,.0f}",
            f"{r['train_memory_increase_mib']:,.0f}", f"{r['train_flops_per_image'] / 1e12:.3g}",
            f"{r['predict_seconds_per_image']:.3f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
        if r["arch"] == "sam" and r["backbone"] == "vit_b" and r["mode"] in PAPER_TABLE2:
            lines.append("| " + " | ".join(_paper_row(r["mode"])) + " |")
            differences = _differences(r, rounds)
            if differences:
                notes.append(f"{r['model']}: not the paper's setting: " + ", ".join(differences) + ".")
        if r.get("trained_on") == "cached embeddings":
            notes.append(f"{r['model']}: the encoder is frozen, so steps train the decoder on cached image "
                         f"embeddings, as real runs do; the encoder runs once per image "
                         f"({r['embedding_seconds_per_image']:.3f} s per image, "
                         f"{one_off_seconds(r) / 60:,.1f} min once per client, included in the total).")
    first = results[0]
    notes += [
        f"Ours: {first['device_name']} ({first['device']}), precision {first['precision']}, batch "
        f"{first['batch_size']}, {first['samples_per_round']} training samples per client per round, random weights.",
        f"Memory: {first['memory']}; the step increase is the peak minus what was in use before training "
        "(weights, and on CPU the Python/torch runtime). The paper's figure is GPU memory usage as the "
        "driver reports it, which also holds PyTorch's cache.",
        "Bytes are measured from the Flower message (ArrayRecord, fp32). The paper's FedMSA count includes "
        "the reference code's 3D-only depth adapters, which fedfms does not build.",
        "Training minutes: step time x steps per round (one local epoch) x rounds x training clients one "
        "after another, as the reference code runs them, plus any one-off embedding time; evaluation is not "
        "included.",
    ]
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def efficiency_command(
    backbone: Annotated[str, typer.Option(help="Backbone: tiny | vit_b | vit_l | vit_h | litemedsam (256 px).")] = "vit_b",
    modes: Annotated[str, typer.Option(help="Fine-tuning modes, comma separated: sam,msa,lora,decoder.")] = "sam,msa,lora",
    arch: Annotated[str, typer.Option(help="sam (uses --backbone, --modes) | unet | nnunet.")] = "sam",
    image_size: Annotated[int | None, typer.Option(min=32, help="Input side (default 1024 on CUDA, 256 on CPU).")] = None,
    num_classes: Annotated[int, typer.Option(min=1, help="Output classes (fundus: disc + cup).")] = 2,
    batch_size: Annotated[int, typer.Option(min=1, help="Training batch (the paper: 6).")] = 6,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (or cuda:N).")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on GPUs and CPUs with bf16, else fp32) | fp32 | bf16 | fp16.")] = "auto",
    steps: Annotated[int, typer.Option(min=1, help="Timed training steps (after one warm-up step).")] = 3,
    predict_images: Annotated[int, typer.Option(min=1, help="Images timed for prediction (after one warm-up).")] = 3,
    samples_per_round: Annotated[int, typer.Option(min=1, help="Training samples per client per round.")] = FUNDUS_SAMPLES_PER_CLIENT,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds for the total training time.")] = 100,
    train_clients: Annotated[int, typer.Option(min=1, help="Clients training per round (one after another).")] = 3,
    isolate: Annotated[bool, typer.Option(help="Measure each configuration in a fresh process.")] = True,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute encoder activations in backward (less memory).")] = False,
    measured_rounds: Annotated[int, typer.Option(min=0, help="Also run this many real simulated rounds (0: none).")] = 0,
    measured_clients: Annotated[int, typer.Option(min=1, help="Clients of the measured run.")] = 2,
    measured_samples: Annotated[int, typer.Option(min=2, help="Synthetic images per client of the measured run.")] = 8,
    out: Annotated[Path, typer.Option(help="Output folder for efficiency.json and efficiency.md.")] = Path("runs/efficiency"),
) -> None:
    """Measure the paper's Table 2 (parameters, bytes per round, training time, memory, FLOPs,
    prediction time) for each mode, with random weights, and write efficiency.json/.md; with
    --measured-rounds also real simulated rounds (seconds, bytes, peak memory)."""
    from typing import get_args

    from fedfms.data.writer import atomic_write_text
    from fedfms.train.device import resolve_device, resolve_precision

    resolve_precision(precision, resolve_device(device))  # refused here, before any measurement
    mode_list = [m.strip() for m in modes.split(",") if m.strip()] if arch == "sam" else ["sam"]
    for name, value, allowed in (("arch", arch, get_args(Architecture)), ("backbone", backbone, get_args(Backbone))):
        if value not in allowed:
            raise typer.BadParameter(f"--{name} {value!r}: expected one of {', '.join(allowed)}")
    unknown = sorted(set(mode_list) - set(MODE_NAMES))
    if unknown or not mode_list:
        raise typer.BadParameter(f"--modes {modes!r}: expected a comma list of {', '.join(MODE_NAMES)}")
    size = image_size or (1024 if resolve_device(device).type == "cuda" and backbone != "litemedsam" else 256)
    configs = [ModelConfig(arch=arch, backbone=backbone, mode=m, image_size=size, num_classes=num_classes) for m in mode_list]
    start = time.perf_counter()
    results = run_efficiency(
        configs, isolate=isolate, progress=typer.echo, batch_size=batch_size, device=device, steps=steps,
        samples_per_round=samples_per_round, predict_images=predict_images, precision=precision,
        gradient_checkpointing=gradient_checkpointing,
        measured={"rounds": measured_rounds, "clients": measured_clients, "samples": measured_samples,
                  "batch_size": batch_size, "device": device, "precision": precision} if measured_rounds else None,
    )
    table = efficiency_markdown(results, rounds, train_clients)
    if measured_rounds:
        table += "\n" + measured_markdown(results)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"rounds": rounds, "train_clients": train_clients, "results": results,
               "paper": {m: vars(p) for m, p in PAPER_TABLE2.items()}, "paper_setting": PAPER_SETTING,
               "wall_seconds": time.perf_counter() - start}
    atomic_write_text(out / "efficiency.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "efficiency.md", table)
    typer.echo("\n" + table + f"\nwritten to {out / 'efficiency.json'} and {out / 'efficiency.md'} "
               f"in {summary['wall_seconds']:.0f} s")
