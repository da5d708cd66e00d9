"""Baselines: MONAI U-Net and the planned nnU-Net (fingerprint -> merge -> plan -> network)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedfms.config import ModelConfig
from fedfms.models.baselines import (
    DataFingerprint,
    NnUNetPlan,
    build_baseline,
    fingerprint_images,
    merge_fingerprints,
    plan_nnunet_2d,
    zscore_per_image,
)


def _fp(
    n: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    p99: tuple[float, ...],
    side: float,
    crop: float,
) -> DataFingerprint:
    return DataFingerprint(
        num_samples=n, median_side=side, median_relative_size_after_cropping=crop,
        foreground_mean=mean, foreground_std=std,
        foreground_p00_5=tuple(m - 0.1 for m in mean), foreground_p99_5=p99,
    )


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
    assert [n for n, p in params if p.grad is None or not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize("arch", ["unet", "nnunet"])
def test_sides_not_divisible_by_the_poolings_are_padded_and_cropped(arch: str) -> None:
    model = build_baseline(ModelConfig(arch=arch, num_classes=2, image_size=64))
    assert model(torch.rand(1, 3, 50, 70)).shape == (1, 2, 50, 70)


def test_nnunet_plan_follows_the_2d_planning_rules() -> None:
    # Pool while the feature map is >= 8 px (so it ends >= 4 px): 64 -> 4 px after 4 poolings,
    # 256 -> 4 px after 6; features double from 32, capped at 512.
    p64 = plan_nnunet_2d(None, 64, 1)
    assert p64.num_pool_per_axis == (4, 4) and p64.patch_size == (64, 64)
    assert p64.strides == ((1, 1),) + ((2, 2),) * 4 and p64.kernel_sizes == ((3, 3),) * 5
    assert p64.features_per_stage == (32, 64, 128, 256, 512)
    p256 = plan_nnunet_2d(None, 256, 2)
    assert p256.num_pool_per_axis == (6, 6)
    assert p256.features_per_stage == (32, 64, 128, 256, 512, 512, 512)
    # 100 px: 100 -> 50 -> 25 -> 13 -> 7 (< 8, stop), the patch is rounded up to 7 * 16.
    assert plan_nnunet_2d(None, 100, 1).patch_size == (112, 112)
    # The memory rule shrinks a patch that does not fit the GPU target, not one that does.
    small_gpu = plan_nnunet_2d(None, 2048, 1, gpu_memory_gb=2.0)
    assert max(small_gpu.patch_size) < 2048 and small_gpu.batch_size == 2
    assert plan_nnunet_2d(None, 2048, 1, gpu_memory_gb=80.0).patch_size == (2048, 2048)


def test_network_built_from_a_256px_plan_runs() -> None:
    plan = plan_nnunet_2d(None, 256, 2)
    model = build_baseline(ModelConfig(arch="nnunet", num_classes=2, image_size=256), plan)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 256, 256)).shape == (1, 2, 256, 256)
    assert len(model.net.encoder.stages) == 7


def test_plan_must_match_the_model_config() -> None:
    plan = plan_nnunet_2d(None, 64, 2)
    with pytest.raises(ValueError, match="classes"):
        build_baseline(ModelConfig(arch="nnunet", num_classes=1, image_size=64), plan)


def test_merge_is_the_sample_weighted_combination() -> None:
    a = _fp(1, mean=(0.2, 0.0), std=(0.1, 0.0), p99=(0.4, 0.1), side=64, crop=1.0)
    b = _fp(3, mean=(0.6, 0.4), std=(0.2, 0.0), p99=(0.8, 0.5), side=128, crop=0.6)
    m = merge_fingerprints([a, b])
    assert m.num_samples == 4
    assert m.median_side == pytest.approx((64 + 3 * 128) / 4)
    assert m.median_relative_size_after_cropping == pytest.approx((1.0 + 3 * 0.6) / 4)
    assert m.foreground_mean == pytest.approx((0.5, 0.3))
    # pooled std: sqrt(E[std^2 + mean^2] - mean^2)
    assert m.foreground_std == pytest.approx(
        (math.sqrt((0.05 + 3 * 0.40) / 4 - 0.25), math.sqrt(3 * 0.16 / 4 - 0.09))
    )
    assert m.foreground_p99_5 == pytest.approx(((0.4 + 3 * 0.8) / 4, (0.1 + 3 * 0.5) / 4))
    assert m.foreground_p00_5 == pytest.approx(((0.1 + 3 * 0.5) / 4, (-0.1 + 3 * 0.3) / 4))


def _client(values: list[float], side: int = 16) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images whose foreground (a centred square) has a constant value per image; a 2-px
    zero frame around a non-zero body."""
    images, masks = [], []
    for v in values:
        image = np.zeros((3, side, side), np.float32)
        image[:, 2:-2, 2:-2] = 0.05
        image[:, 4:8, 4:8] = v
        mask = np.zeros((side, side), np.uint8)
        mask[4:8, 4:8] = 1
        images.append(image)
        masks.append(mask)
    return images, masks


def test_fingerprint_of_a_client() -> None:
    images, masks = _client([0.2, 0.4, 0.6])
    fp = fingerprint_images(images, [torch.from_numpy(m) for m in masks])
    assert fp.num_samples == 3 and fp.median_side == 16
    assert fp.median_relative_size_after_cropping == pytest.approx(12 * 12 / 256)
    assert fp.foreground_mean == pytest.approx((0.4,) * 3)
    assert fp.foreground_std == pytest.approx((math.sqrt(0.08 / 3),) * 3)
    assert fp.foreground_p00_5 == pytest.approx((0.2,) * 3)
    assert fp.foreground_p99_5 == pytest.approx((0.6,) * 3)
    with pytest.raises(ValueError, match="foreground"):
        fingerprint_images(images, [np.zeros_like(m) for m in masks])


def test_merged_fingerprints_equal_the_fingerprint_of_the_pooled_data() -> None:
    a, b = _client([0.2, 0.4]), _client([0.6, 0.8, 1.0])
    merged = merge_fingerprints([fingerprint_images(*a), fingerprint_images(*b)])
    pooled = fingerprint_images(a[0] + b[0], a[1] + b[1])
    assert merged.num_samples == pooled.num_samples == 5
    assert merged.foreground_mean == pytest.approx(pooled.foreground_mean)
    assert merged.foreground_std == pytest.approx(pooled.foreground_std)


def test_plan_uses_the_fingerprint() -> None:
    cropped = _fp(10, mean=(0.5,) * 3, std=(0.1,) * 3, p99=(0.9,) * 3, side=64, crop=0.5)
    full = _fp(10_000, mean=(0.5,) * 3, std=(0.1,) * 3, p99=(0.9,) * 3, side=64, crop=0.9)
    assert plan_nnunet_2d(cropped, 64, 1).use_mask_for_norm
    assert not plan_nnunet_2d(full, 64, 1).use_mask_for_norm
    # a batch covers at most 5% of the data set's pixels (but at least 2 images)
    assert plan_nnunet_2d(cropped, 64, 1).batch_size == 2
    assert plan_nnunet_2d(full, 64, 1).batch_size == round(10_000 * 0.05)


@pytest.mark.parametrize("with_fingerprint", [True, False])
def test_plan_json_round_trip(with_fingerprint: bool) -> None:
    fp = _fp(7, mean=(0.5, 0.4, 0.3), std=(0.1,) * 3, p99=(0.9,) * 3, side=64, crop=0.5)
    plan = plan_nnunet_2d(fp if with_fingerprint else None, 100, 2)
    restored = NnUNetPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert restored == plan
    model = build_baseline(ModelConfig(arch="nnunet", num_classes=2, image_size=100), restored)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 100, 100)).shape == (1, 2, 100, 100)


def test_zscore_per_image_and_channel() -> None:
    x = torch.rand(2, 3, 8, 8) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1)
    z = zscore_per_image(x, use_mask=False)
    assert torch.allclose(z.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(z.std(dim=(2, 3), unbiased=False), torch.ones(2, 3), atol=1e-4)
    x[:, :, :4] = 0  # background outside the body
    zm = zscore_per_image(x, use_mask=True)
    assert (zm[:, :, :4] == 0).all()
    assert torch.allclose(zm[:, :, 4:].mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(zm[:, :, 4:].std(dim=(2, 3), unbiased=False), torch.ones(2, 3), atol=1e-4)


def test_nnunet_normalises_inside_forward() -> None:
    model = build_baseline(ModelConfig(arch="nnunet", num_classes=1, image_size=64)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), model(3.0 * x + 2.0), atol=1e-4)


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="baseline"):
        build_baseline(ModelConfig(arch="sam"))
