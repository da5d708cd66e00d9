"""``fedfms models``: parameter accounting of the SAM fine-tuning modes (torch imported lazily)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

MODES = ("sam", "msa", "lora")
_MB = 1e6


class BackboneChoice(StrEnum):
    tiny = "tiny"
    vit_b = "vit_b"
    vit_l = "vit_l"
    vit_h = "vit_h"


def _millions(n: int, digits: int = 1) -> str:
    return f"{n / 1e6:.{digits}f}M" if n >= 1e5 else f"{n:,}"


def models_command(
    backbone: Annotated[
        BackboneChoice, typer.Option(help="SAM image encoder.")
    ] = BackboneChoice.vit_b,
    image_size: Annotated[int, typer.Option(help="Input side in pixels (multiple of 16).")] = 1024,
    num_classes: Annotated[int, typer.Option(help="Output classes C of the 1x1 head.")] = 1,
    lora_rank: Annotated[int, typer.Option(help="Rank of the LoRA branches on q/k/v.")] = 8,
) -> None:
    """Print total and trainable parameters and the bytes each client exchanges per round,
    for each fine-tuning mode (sam = FedSAM, msa = FedMSA, lora)."""
    from fedfms.config import ModelConfig
    from fedfms.models.accounting import count_parameters, reference_msa_trainable

    name = BackboneChoice(backbone).value
    counts = {
        mode: count_parameters(
            ModelConfig(
                backbone=name,
                mode=mode,
                image_size=image_size,
                num_classes=num_classes,
                lora_rank=lora_rank,
            )
        )
        for mode in MODES
    }
    typer.echo(f"SAM {name}, {image_size}px input, {num_classes} class(es), fp32 weights")
    header = f"{'mode':<6}{'total':>14}{'trainable':>14}{'':>8}{'MB/round up':>14}{'up+down':>12}"
    typer.echo(header)
    for mode, count in counts.items():
        megabytes = count.trainable_bytes / _MB
        typer.echo(
            f"{mode:<6}{count.total:>14,}{count.trainable:>14,}{_millions(count.trainable):>8}"
            f"{megabytes:>14.1f}{2 * megabytes:>12.1f}"
        )
    sam, msa = counts["sam"], counts["msa"]
    reference = reference_msa_trainable(msa)
    typer.echo(
        f"\nsam: every parameter trains; total {_millions(sam.total)} "
        f"(SAM {_millions(sam.total - sam.head)} + head {sam.head})."
    )
    typer.echo(
        f"msa: adapters {_millions(msa.side_branches, 2)}"
        f" + mask decoder {_millions(msa.decoder, 2)} + prompt encoder {msa.prompt_encoder:,}"
        f" + head {msa.head} = {_millions(msa.trainable)}."
    )
    typer.echo(
        "     The paper's FedMSA figure (14.7M for vit_b) counts the reference code's third,\n"
        "     3D-only 'depth' adapter per block: never trained on 2D slices, yet counted, sent.\n"
        f"     With it this model would train and send {_millions(reference)}"
        f" ({reference * 4 / _MB:.1f} MB per round); fedfms does not build it."
    )
    typer.echo(
        f"lora: rank {lora_rank} on the image encoder's q/k/v projections"
        f" ({_millions(counts['lora'].side_branches)}) + decoder, prompt encoder and head."
    )
