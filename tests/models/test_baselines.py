"""The convolutional baselines behind the fedfms segmenter contract, and their configuration."""

from __future__ import annotations

import pytest
import torch

from fedfms.config import ModelConfig
from fedfms.models.baselines import build_baseline


@pytest.mark.parametrize("arch", ["unet", "nnunet"])
@pytest.mark.parametrize("num_classes", [1, 2])
def test_output_shape_and_every_parameter_trains(arch: str, num_classes: int) -> None:
    torch.manual_seed(0)
    model = build_baseline(ModelConfig(arch=arch, num_classes=num_classes, image_size=64))
    logits = model(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, num_classes, 64, 64)
    assert logits.dtype == torch.float32
    logits.sum().backward()
    params = list(model.named_parameters())
    assert params and all(p.requires_grad for _, p in params)
    idle = [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0]
    # whole-image training has one output head; nnU-Net's lower-resolution (deep supervision)
    # heads train in nnU-Net's own recipe only
    heads = [n for n, _ in params if ".seg_layers." in n]
    last = max(int(n.split(".seg_layers.")[1].split(".")[0]) for n in heads) if heads else 0
    expected_idle = [n for n in heads if f".seg_layers.{last}." not in n]
    assert idle == expected_idle


@pytest.mark.parametrize("arch", ["unet", "nnunet"])
def test_sides_not_divisible_by_the_poolings_are_padded_and_cropped(arch: str) -> None:
    model = build_baseline(ModelConfig(arch=arch, num_classes=2, image_size=64))
    assert model(torch.rand(1, 3, 50, 70)).shape == (1, 2, 50, 70)
    assert model.eval()(torch.rand(1, 3, 50, 70)).shape == (1, 2, 50, 70)


def test_nnunet_normalises_inside_forward() -> None:
    """The network's first instance norm alone would make the output blind to a global affine
    change of intensities; the plan's z-score is checked on its own: each image and channel
    comes out with mean 0 and std 1, whatever its contrast."""
    model = build_baseline(ModelConfig(arch="nnunet", num_classes=1, image_size=64)).eval()
    x = torch.rand(2, 3, 64, 64)
    x[1] = 0.1 * x[1] + 0.8  # a bright, low-contrast image
    normalised = model.normalise(x)
    assert normalised.shape == x.shape
    assert torch.allclose(normalised.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-4)
    assert torch.allclose(normalised.std(dim=(2, 3)), torch.ones(2, 3), atol=1e-2)
    assert torch.allclose(model.normalise(0.5 * x + 0.2), normalised, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(model(x[:1]), model(0.5 * x[:1] + 0.2), atol=0.05)


def test_nnunet_plan_must_match_the_model_config() -> None:
    planned = build_baseline(ModelConfig(arch="nnunet", num_classes=2, image_size=64))
    plan = {"plans": planned.plans, "dataset": planned.dataset}
    with pytest.raises(ValueError, match="segments 2 classes, the model config asks for 1"):
        build_baseline(ModelConfig(arch="nnunet", num_classes=1, image_size=64, nnunet={"plan": plan}))


def test_former_flat_baseline_keys_move_into_their_sections() -> None:
    cfg = ModelConfig.model_validate({"arch": "unet", "unet_channels": [8, 16], "unet_res_units": 1,
                                      "nnunet_gpu_memory_gb": 4.0, "nnunet_plan": None})
    assert cfg.unet.channels == (8, 16) and cfg.unet.res_units == 1 and cfg.nnunet.gpu_memory_gb == 4.0


def test_an_nnunet_of_the_former_planning_restatement_is_refused_with_how_to_retrain() -> None:
    former = {"arch": "nnunet", "nnunet_plan": {"patch_size": [64, 64], "batch_size": 2}}
    with pytest.raises(ValueError, match=r"former re-statement.*Retrain it: `fedfms train CONFIG`"):
        ModelConfig.model_validate(former)


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="baseline"):
        build_baseline(ModelConfig(arch="sam"))


def test_fedprox_is_refused_with_nnunets_recipe() -> None:
    from fedfms.config import DataConfig, FederationConfig, RunConfig

    nnunet = ModelConfig(arch="nnunet", num_classes=1, image_size=64)
    with pytest.raises(ValueError, match="not part of nnU-Net's recipe"):
        RunConfig(data=DataConfig(), model=nnunet, federation=FederationConfig(strategy="fedprox"))
    paper = nnunet.model_copy(update={"nnunet": nnunet.nnunet.model_copy(update={"recipe": "paper"})})
    assert RunConfig(data=DataConfig(), model=paper, federation=FederationConfig(strategy="fedprox")).model.nnunet.recipe == "paper"


def test_unet_learns_an_empty_mask_at_the_fine_tuning_learning_rate() -> None:
    """The U-Net's logits come from a plain 1x1 head, so Adam at 1e-4 (the SAM rows' rate) on
    images without foreground shrinks the predicted foreground from the first steps (here from
    about half the pixels by more than 10 points in 40 steps). MONAI's UNet alone, whose
    residual top layer instance-normalises its own output, predicted more foreground after
    these steps than before (0.63 -> 0.65 here; 95 % of pixels after two epochs on brain MRI)."""
    from fedfms.config import TrainConfig
    from fedfms.train.step import TrainStep

    torch.manual_seed(0)
    model = build_baseline(ModelConfig(arch="unet", num_classes=1, image_size=64, unet={"channels": [8, 16, 32]}))
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 3, 64, 64, generator=generator), "mask": torch.zeros(4, 1, 64, 64)}

    def foreground() -> float:
        with torch.no_grad():
            return (model.eval()(batch["image"]) > 0).float().mean().item()

    before = foreground()
    step = TrainStep(model, TrainConfig(lr=1e-4, loss="dice_bce", precision="fp32"), 1, torch.device("cpu"))
    for _ in range(40):
        step(batch)
    assert foreground() < before - 0.1
