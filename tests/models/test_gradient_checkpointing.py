"""Gradient checkpointing recomputes the encoder in backward: same gradients, less kept."""

import pytest
import torch

from fedfms.config import ModelConfig
from fedfms.models import build_model
from fedfms.models.memory import set_gradient_checkpointing
from fedfms.train.losses import bce_loss


def _gradients(model, images, masks):
    model.zero_grad(set_to_none=True)
    bce_loss(1, 2.0)(model(images), masks).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["sam", "msa", "lora"])
def test_same_gradients_with_and_without_checkpointing(mode):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny", mode=mode, image_size=64))
    images, masks = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 16, 16) > 0.7).float()
    plain = _gradients(model, images, masks)
    set_gradient_checkpointing(model, True)
    layers = model.sam.vision_encoder.layers
    assert all(layer.gradient_checkpointing for layer in layers)
    checkpointed = _gradients(model, images, masks)
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    assert any("vision_encoder" in name for name in checkpointed)  # encoder-side parameters get gradients
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)
    set_gradient_checkpointing(model, False)
    assert not any(layer.gradient_checkpointing for layer in layers)


def test_checkpointing_is_refused_for_a_baseline():
    with pytest.raises(ValueError, match="SAM models"):
        set_gradient_checkpointing(build_model(ModelConfig(arch="unet", image_size=64)), True)
