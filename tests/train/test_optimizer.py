"""The local optimizer: only parameters that receive a gradient, fused Adam, same training."""

from __future__ import annotations

import pytest
import torch

from fedfms.config import ModelConfig, TrainConfig
from fedfms.models import build_model
from fedfms.train.optimizer import local_optimizer, trained_parameters
from fedfms.train.step import TrainStep

CONFIGS = {
    "sam-none": ModelConfig(backbone="tiny", image_size=64, mode="sam", num_classes=2),
    "msa-bare": ModelConfig(backbone="tiny", image_size=64, mode="msa", num_classes=2, prompt="bare"),
    "lite-box": ModelConfig(backbone="litemedsam", mode="msa", num_classes=2, pretrained=False),
    "lite-none": ModelConfig(backbone="litemedsam", mode="decoder", num_classes=1, pretrained=False, prompt="none"),
}


def _batch(cfg: ModelConfig, size: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {"image": torch.rand(size, 3, cfg.image_size, cfg.image_size, generator=generator),
            "mask": (torch.rand(size, cfg.num_classes, cfg.mask_size, cfg.mask_size, generator=generator) > 0.5).float()}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_trained_parameters_are_exactly_those_a_backward_reaches(name: str) -> None:
    cfg = CONFIGS[name]
    model = build_model(cfg, seed=0)
    batch = _batch(cfg, 1)
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch["image"]), batch["mask"]).backward()
    reached = {n for n, p in model.named_parameters() if p.grad is not None}
    assert set(trained_parameters(model)) == reached
    idle = model.idle_parameter_names()
    assert any(".iou_prediction_head." in n for n in idle)  # the IoU score is never trained
    assert idle and all(model.get_parameter(n).requires_grad for n in idle)  # they still travel


def test_the_optimizer_holds_only_trained_parameters_and_is_fused_on_cpu() -> None:
    model = build_model(CONFIGS["sam-none"], seed=0)
    optimizer = local_optimizer(model, TrainConfig(), torch.device("cpu"))
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in trained_parameters(model).values()}
    assert len(held) < sum(p.requires_grad for p in model.parameters())
    assert optimizer.param_groups[0]["fused"]


def _train(cfg: ModelConfig, optimizer: str) -> tuple[list[float], torch.nn.Module]:
    """Three fp32 steps with ``local_optimizer`` (``ours``), fused Adam over every parameter that
    requires grad (``all``) or PyTorch's default Adam over those (``plain``, before issue 13)."""
    model, train_cfg = build_model(cfg, seed=0), TrainConfig(precision="fp32", lr=1e-3)
    params = [p for p in model.parameters() if p.requires_grad]
    chosen = {"ours": None, "all": torch.optim.Adam(params, lr=1e-3, fused=True),
              "plain": torch.optim.Adam(params, lr=1e-3)}[optimizer]
    step = TrainStep(model, train_cfg, cfg.num_classes, torch.device("cpu"), optimizer=chosen)
    losses = []
    for seed in range(3):
        image = torch.rand(2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(seed))
        losses.append(step(_batch(cfg) | {"image": image}).item())
    return losses, model


def test_leaving_idle_parameters_out_changes_no_training_result() -> None:
    (ours_losses, ours), (all_losses, every) = _train(CONFIGS["sam-none"], "ours"), _train(CONFIGS["sam-none"], "all")
    assert ours_losses == all_losses
    for (name, a), b in zip(ours.state_dict().items(), every.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_fused_adam_trains_like_the_plain_one() -> None:
    (fused, _), (plain, _) = _train(CONFIGS["sam-none"], "ours"), _train(CONFIGS["sam-none"], "plain")
    assert fused == pytest.approx(plain, rel=1e-4)
