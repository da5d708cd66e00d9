"""``fedfms models``: parameter accounting of the fine-tuning modes (torch imported lazily)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

MODES = ("sam", "msa", "lora", "decoder")
_MB = 1e6


class BackboneChoice(StrEnum):
    tiny = "tiny"
    vit_b = "vit_b"
    vit_l = "vit_l"
    vit_h = "vit_h"
    litemedsam = "litemedsam"


#: The table's columns: header and width (the first left-aligned, the others right-aligned).
COLUMNS = (("mode", 8), ("total", 14), ("trainable", 14), ("rounded", 10), ("MB-up/round", 14), ("up+down", 10))


def table_line(cells: tuple[str, ...]) -> str:
    """One line of the table: ``cells`` under the :data:`COLUMNS` headers."""
    return "".join(f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
                   for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True)))


def _millions(n: int, digits: int = 1) -> str:
    return f"{n / 1e6:.{digits}f}M" if n >= 1e5 else f"{n:,}"


def models_command(
    backbone: Annotated[
        BackboneChoice, typer.Option(help="Image encoder: SAM's ViTs, tiny, or LiteMedSAM's TinyViT.")
    ] = BackboneChoice.vit_b,
    image_size: Annotated[
        int | None, typer.Option(help="Input side in pixels (multiple of 16; default 1024, litemedsam 256).")
    ] = None,
    num_classes: Annotated[int, typer.Option(help="Output classes C of the 1x1 head.")] = 1,
    lora_rank: Annotated[int, typer.Option(help="Rank of the LoRA branches on q/k/v.")] = 8,
) -> None:
    """Print total and trainable parameters and the bytes each client exchanges per round,
    for each fine-tuning mode (sam = FedSAM, msa = FedMSA, lora, decoder)."""
    from fedfms.config import ModelConfig
    from fedfms.models.accounting import count_parameters, reference_msa_trainable

    name = BackboneChoice(backbone).value
    size = {} if image_size is None else {"image_size": image_size}
    configs = {
        mode: ModelConfig(backbone=name, mode=mode, num_classes=num_classes, lora_rank=lora_rank, **size)
        for mode in MODES
    }
    counts = {mode: count_parameters(cfg) for mode, cfg in configs.items()}
    typer.echo(f"{name}, {configs['sam'].image_size}px input, {num_classes} class(es), fp32 weights")
    typer.echo(table_line(tuple(name for name, _ in COLUMNS)))
    for mode, count in counts.items():
        megabytes = count.trainable_bytes / _MB
        typer.echo(table_line((mode, f"{count.total:,}", f"{count.trainable:,}", _millions(count.trainable),
                               f"{megabytes:.1f}", f"{2 * megabytes:.1f}")))
    sam, msa, decoder = counts["sam"], counts["msa"], counts["decoder"]
    typer.echo(
        f"\nsam: every parameter trains; total {_millions(sam.total)} "
        f"(foundation model {_millions(sam.total - sam.head)} + head {sam.head})."
    )
    typer.echo(
        f"msa: adapters {_millions(msa.side_branches, 2)}"
        f" + mask decoder {_millions(msa.decoder, 2)} + prompt encoder {msa.prompt_encoder:,}"
        f" + head {msa.head} = {_millions(msa.trainable)}."
    )
    if name != "litemedsam":
        reference = reference_msa_trainable(msa)
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
    typer.echo(
        f"decoder: image encoder frozen, no branches: mask decoder {_millions(decoder.decoder, 2)}"
        f" + prompt encoder {decoder.prompt_encoder:,} + head {decoder.head} = {_millions(decoder.trainable)};"
        "\n     its image embeddings are computed once per sample and cached at each site."
    )
