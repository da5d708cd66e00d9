"""What every prompt-free SAM-family segmenter offers, whatever its image encoder.

``images (B, 3, S, S) in [0, 1]`` -> :meth:`embed` (input normalisation + image encoder)
-> ``(B, 256, h, w)`` image embeddings -> :meth:`decode` (mask decoder with no prompt, all 4
mask tokens) -> ``(B, 4, 4h, 4w)`` -> 1x1 class head -> ``(B, C, 4h, 4w)`` logits.

Splitting the forward pass at the image embedding lets a run whose image encoder is frozen
(``decoder`` mode) compute the embeddings once and train on them (see
:mod:`fedfms.train.embeddings`).
"""

from __future__ import annotations

import torch
from torch import nn

NUM_MASK_TOKENS = 4


class FirstMaskToken(nn.Module):
    """One-class "head" of the reference code: ``(B, 4, H, W)`` -> mask token 0, ``(B, 1, H, W)``."""

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return masks[:, :1]


def class_head(num_classes: int, kind: str = "conv") -> nn.Module:
    """``conv``: ``Conv2d(4, C, 1)`` over the 4 mask tokens; ``token0``: :class:`FirstMaskToken`."""
    if kind == "token0":
        return FirstMaskToken()
    return nn.Conv2d(NUM_MASK_TOKENS, num_classes, kernel_size=1)


class PromptFreeSegmenter(nn.Module):
    """Base of :class:`~fedfms.models.sam.SamSegmenter` and
    :class:`~fedfms.models.litemedsam.LiteMedSamSegmenter`; subclasses set ``head``, name the
    attribute holding the pretrained model (``FOUNDATION``) and its three parts' attribute
    names (``PARTS``: image encoder, mask decoder, prompt encoder), and implement
    :meth:`attention_blocks`, :meth:`embed` and :meth:`decode`. ``MLP_NORMALISES_INPUT``: the
    encoder blocks' MLP applies its own LayerNorm (an MSA adapter beside it takes that input)."""

    FOUNDATION: str
    PARTS: tuple[str, str, str] = ("image_encoder", "mask_decoder", "prompt_encoder")
    MLP_NORMALISES_INPUT = False
    head: nn.Module

    def _part(self, index: int) -> nn.Module:
        return getattr(getattr(self, self.FOUNDATION), self.PARTS[index])

    @property
    def image_encoder(self) -> nn.Module:
        """The image encoder (frozen in every mode but ``sam``)."""
        return self._part(0)

    @property
    def mask_decoder(self) -> nn.Module:
        return self._part(1)

    @property
    def prompt_encoder(self) -> nn.Module:
        return self._part(2)

    def prompt_parts_used(self) -> tuple[str, ...]:
        """Qualified names (inside the prompt encoder) of the modules the fixed prompt uses."""
        raise NotImplementedError

    def idle_parameter_names(self) -> set[str]:
        """Names of the parameters the prompt-free forward never uses, so never receive a
        gradient: the mask decoder's IoU head (its score is not trained) and the prompt
        encoder's modules outside :meth:`prompt_parts_used`. They still travel and count as
        learnable (the paper counts them); the optimizer leaves them out."""
        used = self.prompt_parts_used()
        parts = {"mask_decoder.iou_prediction_head": self.mask_decoder.iou_prediction_head} | {
            f"prompt_encoder.{name}": module for name, module in self.prompt_encoder.named_modules()
            if name and not any(name == u or name.startswith(f"{u}.") or u.startswith(f"{name}.") for u in used)
        }
        idle = {id(p) for part in parts.values() for p in part.parameters()}
        return {name for name, p in self.named_parameters() if id(p) in idle}

    def attention_blocks(self) -> list[tuple[nn.Module, int]]:
        """The image encoder's attention blocks (each with ``attn.qkv`` and ``mlp``) and their
        widths: where MSA adapters and LoRA go."""
        raise NotImplementedError

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` images in [0, 1] -> ``(B, 256, h, w)`` image embeddings."""
        raise NotImplementedError

    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, 256, h, w)`` -> ``(B, 4, 4h, 4w)`` logits of all 4 mask tokens, no prompt."""
        raise NotImplementedError

    def classify(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, 256, h, w)`` image embeddings -> ``(B, C, 4h, 4w)`` class logits."""
        return self.head(self.decode(embeddings))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float images in [0, 1] -> ``(B, C, 4h, 4w)`` class logits."""
        return self.classify(self.embed(images))
