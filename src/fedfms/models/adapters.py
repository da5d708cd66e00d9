"""Trainable side branches inserted into frozen vision layers: MSA adapters and LoRA, in
transformers' SAM ViT layers here and in LiteMedSAM's TinyViT blocks (:mod:`fedfms.models.litemedsam`).

A branch is a small module attached as a child of the layer it modifies and applied with a
forward hook on the transformers module, so nothing of transformers is copied and every
pretrained parameter keeps its ``SamModel`` name (``...layers.3.attn.qkv.weight`` is the same in
every fine-tuning mode); the branch parameters get their own names
(``...layers.3.attn_adapter.down.weight``, ``...layers.3.attn.qkv_lora.up.weight``).

Per ViT block, Medical SAM Adapter (MSA) puts
  * one adapter on the attention output with a skip connection: ``a + adapter(a)``;
  * one adapter parallel to the MLP, scaled by 0.5: ``x + mlp(n) + 0.5 * adapter(n)``
    with ``n = norm2(x)``.
The reference code's third, 3D-only "depth" adapter is not built.

Both kinds of branch start as the identity: the up projection is zero-initialised (the MSA
reference uses PyTorch's default initialisation, which perturbs the pretrained encoder before
any training; LoRA's usual ``B = 0`` start is used for both).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class SideBranch(nn.Module):
    """A trainable branch added to a frozen module; ``forward(x)`` gives the branch output."""

    def add_to_output(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        """Forward hook: ``y -> y + branch(y)``; for attention, ``y`` is the first output."""
        if isinstance(output, tuple):
            return (output[0] + self(output[0]), *output[1:])
        return output + self(output)

    def add_beside_normalised(
        self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        """Forward hook for a module that normalises its own input (TinyViT's ``Mlp``):
        ``module(x) -> module(x) + branch(module.norm(x))``."""
        return output + self(module.norm(args[0]))

    def add_beside(
        self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor
    ) -> torch.Tensor:
        """Forward hook: ``module(x) -> module(x) + branch(x)`` (branch parallel to the module)."""
        return output + self(args[0])


class Adapter(SideBranch):
    """MSA bottleneck ``(..., d) -> Linear(d, d*ratio) -> GELU -> Linear(d*ratio, d) -> (..., d)``,
    multiplied by ``scale``."""

    def __init__(self, dim: int, ratio: float, scale: float = 1.0) -> None:
        super().__init__()
        hidden = max(1, int(dim * ratio))
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.scale = scale
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.act(self.down(x)))


class LoRA(SideBranch):
    """Low-rank update of a frozen ``Linear(in, out)``: ``(..., in) -> (alpha / rank) * B A x``."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        self.scaling = alpha / rank
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scaling * self.up(self.down(x))


MLP_ADAPTER_SCALE = 0.5


def add_msa_adapters(encoder: nn.Module, ratio: float) -> None:
    """Insert the two MSA adapters into every layer of a transformers ``SamVisionEncoder``."""
    for layer in encoder.layers:
        dim = layer.layer_norm1.normalized_shape[0]
        layer.attn_adapter = Adapter(dim, ratio)
        layer.mlp_adapter = Adapter(dim, ratio, scale=MLP_ADAPTER_SCALE)
        layer.attn.register_forward_hook(layer.attn_adapter.add_to_output)
        layer.mlp.register_forward_hook(layer.mlp_adapter.add_beside)


def add_lora(blocks: Iterable[nn.Module], rank: int, alpha: float) -> None:
    """Add a LoRA branch beside the fused q/k/v projection (``attn.qkv``) of every block."""
    for layer in blocks:
        qkv = layer.attn.qkv
        layer.attn.qkv_lora = LoRA(qkv.in_features, qkv.out_features, rank, alpha)
        qkv.register_forward_hook(layer.attn.qkv_lora.add_beside)


def side_branch_names(model: nn.Module) -> list[str]:
    """Qualified names of the side branches inside ``model`` (their parameters are new)."""
    return [name for name, module in model.named_modules() if isinstance(module, SideBranch)]
