"""Trading compute for memory while training: gradient checkpointing of SAM's ViT blocks.

With it, a block's activations are not kept for the backward pass but recomputed there
(transformers' own mechanism, non-reentrant ``torch.utils.checkpoint``), so activation memory
grows with one block instead of all of them, at the cost of a second forward through the encoder.
The adapter and LoRA wrappers sit inside the blocks and are recomputed with them.
"""

from __future__ import annotations

from torch import nn

from fedfms.models.sam import SamSegmenter


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Switch gradient checkpointing of the image encoder's blocks on or off (SAM models only)."""
    if not isinstance(model, SamSegmenter):
        raise ValueError(f"gradient checkpointing is offered for SAM models, not {type(model).__name__}")
    if enabled:
        model.sam.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.sam.gradient_checkpointing_disable()
