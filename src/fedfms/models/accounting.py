"""Parameter accounting per fine-tuning mode: total, trainable, bytes exchanged per round.

SAM's ViTs are built on PyTorch's ``meta`` device (shapes only, no memory, no initialisation),
so ViT-H counts take about a second; LiteMedSAM (whose TinyViT reads tensor values while it is
built) is built on the CPU, which its 9.8M parameters make cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedfms.config import ModelConfig
from fedfms.models.adapters import side_branch_names
from fedfms.models.registry import construct_model


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of one model configuration; ``trainable_bytes`` is one client's upload per
    round (the server sends the same amount back)."""

    mode: str
    total: int
    trainable: int
    trainable_bytes: int
    side_branches: int
    decoder: int
    prompt_encoder: int
    head: int


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(cfg: ModelConfig) -> ParameterCount:
    """Count the parameters of the SAM-family model ``cfg`` describes (no weights are read)."""
    device = "cpu" if cfg.backbone == "litemedsam" else "meta"
    with torch.device(device):
        model = construct_model(cfg.model_copy(update={"checkpoint": None}))
    trainable = [p for p in model.parameters() if p.requires_grad]
    encoder = model.image_encoder
    return ParameterCount(
        mode=cfg.mode,
        total=_numel(model),
        trainable=sum(p.numel() for p in trainable),
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        side_branches=sum(_numel(encoder.get_submodule(n)) for n in side_branch_names(encoder)),
        decoder=_numel(model.mask_decoder),
        prompt_encoder=_numel(model.prompt_encoder),
        head=_numel(model.head),
    )


def reference_msa_trainable(msa: ParameterCount) -> int:
    """What the public FedMSA code trains and sends for the same model: it also builds a third,
    3D-only "depth" adapter per block, as large as each of the two 2D ones, counts it as
    learnable and exchanges it though 2D input never reaches it (paper: 14.7M for ViT-B)."""
    return msa.trainable + msa.side_branches // 2
