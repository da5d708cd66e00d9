"""Convolutional baselines of the paper: federated U-Net (MONAI) and federated nnU-Net (nnunetv2).

Both are plain ``nn.Module`` segmenters with the same contract as fedfms' SAM models::

    images (B, 3, H, W) float32 in [0, 1]  ->  logits (B, C, H, W)

and every parameter trains (and travels in federated runs). The nnU-Net is nnunetv2's network
for the run's plan (:class:`fedfms.nnunet.segmenter.NnUNetSegmenter`); planning, its training
recipe and its inference live in :mod:`fedfms.nnunet`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from fedfms.config import ModelConfig
from fedfms.nnunet.planning import nominal_plan
from fedfms.nnunet.segmenter import NnUNetSegmenter


class UNetSegmenter(nn.Module):
    """MONAI's 2D U-Net with the fedfms contract: zero-pad bottom/right to a multiple of
    ``divisor`` -> ``net`` -> crop; (B, 3, H, W) -> logits (B, C, H, W)."""

    def __init__(self, net: nn.Module, divisor: int):
        super().__init__()
        self.net = net
        self.divisor = divisor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        x = F.pad(images, (0, -w % self.divisor, 0, -h % self.divisor))
        return self.net(x)[..., :h, :w]


def build_unet(cfg: ModelConfig) -> UNetSegmenter:
    """MONAI ``UNet`` (channels ``cfg.unet.channels``, stride 2 between levels, residual units)
    giving ``channels[0]`` feature maps, then a 1x1 convolution head to ``cfg.num_classes`` logits.

    The head is there because MONAI's top up-layer, with residual units, instance-normalises and
    activates its own output: used as logits, every image's map has mean 0 and unit variance
    before the last residual unit, so "no lesion anywhere" is out of reach for many steps (with
    Adam at 1e-4, a brain-MRI U-Net predicted lesion on 95 % of pixels after two epochs).
    """
    channels = tuple(cfg.unet.channels)
    features = UNet(spatial_dims=2, in_channels=3, out_channels=channels[0], channels=channels,
                    strides=(2,) * (len(channels) - 1), num_res_units=cfg.unet.res_units)
    head = nn.Conv2d(channels[0], cfg.num_classes, kernel_size=1)
    return UNetSegmenter(nn.Sequential(OrderedDict(features=features, head=head)), 2 ** (len(channels) - 1))


def build_nnunet(cfg: ModelConfig) -> NnUNetSegmenter:
    """nnunetv2's network for ``cfg.nnunet.plan``; without a plan (no data seen: model listings,
    benchmarks) for a nominal plan of ``cfg.image_size`` images."""
    plan = cfg.nnunet.plan or nominal_plan(cfg.image_size, [f"class_{c + 1}" for c in range(cfg.num_classes)],
                                           cfg.nnunet.gpu_memory_gb)
    model = NnUNetSegmenter(plan["plans"], plan["dataset"], cfg.nnunet.tile_step, cfg.nnunet.mirroring)
    outputs = model.class_count
    if outputs != cfg.num_classes:
        raise ValueError(f"the nnU-Net plan segments {outputs} classes, the model config asks for {cfg.num_classes}")
    return model


def build_baseline(cfg: ModelConfig) -> nn.Module:
    """The baseline named by ``cfg.arch`` (``unet`` or ``nnunet``), freshly initialised."""
    if cfg.arch == "unet":
        return build_unet(cfg)
    if cfg.arch == "nnunet":
        return build_nnunet(cfg)
    raise ValueError(f"not a baseline architecture: {cfg.arch!r} (expected 'unet' or 'nnunet')")
