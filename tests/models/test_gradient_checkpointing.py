"""Gradient checkpointing recomputes the encoder in backward: same gradients, blocks run twice."""

import pytest
import torch

from fedfms.config import ModelConfig
from fedfms.models import build_model
from fedfms.models.memory import set_gradient_checkpointing
from fedfms.train.losses import bce_loss


def _gradients_and_block_runs(model, images, masks) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Gradients of one loss, and how often each encoder block started in forward + backward
    (counted with pre-hooks on its first module, test instrumentation only: torch stops a
    recomputation once it has every tensor backward needs, so a block's last module may not
    finish a second time)."""
    layers = model.sam.vision_encoder.layers
    runs = [0] * len(layers)

    def counter(index):
        def count(*_):
            runs[index] += 1
        return count

    handles = [layer.layer_norm1.register_forward_pre_hook(counter(i)) for i, layer in enumerate(layers)]
    model.zero_grad(set_to_none=True)
    loss = bce_loss(1, 2.0)(model(images), masks)
    forward_runs = list(runs)
    loss.backward()
    for handle in handles:
        handle.remove()
    assert forward_runs == [1] * len(layers)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, runs


@pytest.mark.parametrize("mode", ["sam", "msa", "lora"])
def test_checkpointing_recomputes_every_block_and_keeps_the_gradients(mode):
    model = build_model(ModelConfig(backbone="tiny", mode=mode, image_size=64), seed=0)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=generator)
    masks = (torch.rand(2, 1, 16, 16, generator=generator) > 0.7).float()
    plain, plain_runs = _gradients_and_block_runs(model, images, masks)
    assert plain_runs == [1, 1]  # kept activations: backward runs no block again
    set_gradient_checkpointing(model, True)
    checkpointed, runs = _gradients_and_block_runs(model, images, masks)
    assert runs == [2, 2]  # every block ran again in backward: its activations were recomputed
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    assert any("vision_encoder" in name for name in checkpointed)  # encoder-side parameters get gradients
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)
    set_gradient_checkpointing(model, False)
    _, runs = _gradients_and_block_runs(model, images, masks)
    assert runs == [1, 1]


def test_checkpointing_is_refused_for_a_baseline():
    with pytest.raises(ValueError, match="SAM models"):
        set_gradient_checkpointing(build_model(ModelConfig(arch="unet", image_size=64)), True)
