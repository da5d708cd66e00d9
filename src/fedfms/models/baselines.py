"""Convolutional baselines of the paper: federated U-Net (MONAI) and federated nnU-Net.

Both are plain ``nn.Module`` segmenters with the same contract as fedfms' SAM models::

    images (B, 3, S, S) float32 in [0, 1]  ->  logits (B, C, S, S)

and every parameter trains (and travels in federated runs).

nnU-Net is planned, not hard-coded. Each client computes a :class:`DataFingerprint` of its own
data (:func:`fingerprint_images`); the server merges them weighted by sample count
(:func:`merge_fingerprints`, as FednnU-Net aggregates fingerprints before planning) and derives
an :class:`NnUNetPlan` with nnU-Net v2's 2D rules (:func:`plan_nnunet_2d`). The plan is a JSON
dictionary away (:meth:`NnUNetPlan.to_dict`), so it can travel in a Flower ConfigRecord and be
saved with a checkpoint; :func:`build_baseline` turns it into a ``PlainConvUNet`` of
``dynamic_network_architectures``, the network class nnU-Net v2 itself instantiates.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from fedfms.config import ModelConfig

# nnU-Net v2 ExperimentPlanner constants (2D configuration).
_BASE_FEATURES = 32
_MAX_FEATURES_2D = 512
_MIN_FEATURE_MAP_EDGE = 4
_INITIAL_PATCH_2D = 2048
_CONVS_PER_STAGE = 2
_REF_VRAM_2D = 85_000_000  # feature-map voxels that fit `_REF_GB` at batch size `_REF_BATCH_2D`
_REF_GB = 8.0
_REF_BATCH_2D = 12
_MIN_BATCH = 2
_MAX_DATASET_COVERED = 0.05
# DatasetFingerprintExtractor: foreground pixels sampled per case for the intensity statistics.
_FG_PIXELS_PER_IMAGE = 10_000
# Below this median (cropped / original) size, z-scoring uses only the non-zero region.
_CROP_RATIO_FOR_MASKED_NORM = 0.75


@dataclass(frozen=True)
class DataFingerprint:
    """What planning needs to know about one client's (or the federation's) 2D data.

    Per-channel tuples hold nnU-Net's foreground intensity statistics, computed from pixels
    under the mask (``num_samples`` images, each contributing the same number of samples).
    ``median_side`` is the median image side (recorded for provenance: planning uses the side
    fedfms resizes to); ``median_relative_size_after_cropping`` the median fraction of an image
    left after cropping to its non-zero bounding box.
    """

    num_samples: int
    median_side: float
    median_relative_size_after_cropping: float
    foreground_mean: tuple[float, ...]
    foreground_std: tuple[float, ...]
    foreground_p00_5: tuple[float, ...]
    foreground_p99_5: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataFingerprint:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def fingerprint_images(
    images: Iterable[np.ndarray | torch.Tensor],
    masks: Iterable[np.ndarray | torch.Tensor],
    seed: int = 0,
) -> DataFingerprint:
    """Fingerprint one client's data, locally; only these statistics leave the site.

    Args:
        images: arrays (3, H, W) in [0, 1].
        masks: arrays (H, W) of labels or (C, H, W) of binary masks; foreground is any non-zero.
        seed: for the per-image sampling of foreground pixels.
    """
    rng = np.random.default_rng(seed)
    sides, crop_ratios, samples = [], [], []
    for image, mask in zip(images, masks, strict=True):
        image, mask = np.asarray(image, dtype=np.float32), np.asarray(mask)
        foreground = mask.reshape(-1, *image.shape[1:]).any(axis=0)
        nonzero = (image != 0).any(axis=0)
        rows, cols = np.flatnonzero(nonzero.any(axis=1)), np.flatnonzero(nonzero.any(axis=0))
        cropped = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) if rows.size else 0
        crop_ratios.append(cropped / nonzero.size)
        sides.append(float(np.median(image.shape[1:])))
        pixels = image[:, foreground]  # (3, N)
        if pixels.shape[1]:
            samples.append(pixels[:, rng.integers(0, pixels.shape[1], _FG_PIXELS_PER_IMAGE)])
    if not sides:
        raise ValueError("cannot fingerprint an empty client: no images")
    if not samples:
        raise ValueError(f"no foreground pixel in any of the {len(sides)} masks of this client")
    fg = np.concatenate(samples, axis=1).astype(np.float64)
    return DataFingerprint(
        num_samples=len(sides),
        median_side=float(np.median(sides)),
        median_relative_size_after_cropping=float(np.median(crop_ratios)),
        foreground_mean=tuple(fg.mean(axis=1).tolist()),
        foreground_std=tuple(fg.std(axis=1).tolist()),
        foreground_p00_5=tuple(np.percentile(fg, 0.5, axis=1).tolist()),
        foreground_p99_5=tuple(np.percentile(fg, 99.5, axis=1).tolist()),
    )


def merge_fingerprints(fps: Sequence[DataFingerprint]) -> DataFingerprint:
    """Server side: one fingerprint for the federation, each client weighted by its samples.

    Means are exact (nnU-Net samples the same number of foreground pixels per image), the
    standard deviation is the pooled one, sqrt(E[std^2 + mean^2] - mean^2); percentiles and
    medians are sample-weighted means of the clients' values (an approximation: exact pooled
    quantiles would need the raw pixels).
    """
    if not fps:
        raise ValueError("no fingerprint to merge")
    w = np.array([fp.num_samples for fp in fps], dtype=np.float64)
    w /= w.sum()

    def avg(values: Sequence[Any]) -> np.ndarray:
        return np.tensordot(w, np.asarray(values, dtype=np.float64), axes=1)

    mean = avg([fp.foreground_mean for fp in fps])
    second_moment = avg(
        [np.square(fp.foreground_std) + np.square(fp.foreground_mean) for fp in fps]
    )
    return DataFingerprint(
        num_samples=sum(fp.num_samples for fp in fps),
        median_side=float(avg([fp.median_side for fp in fps])),
        median_relative_size_after_cropping=float(
            avg([fp.median_relative_size_after_cropping for fp in fps])
        ),
        foreground_mean=tuple(mean.tolist()),
        foreground_std=tuple(np.sqrt(np.maximum(second_moment - mean**2, 0)).tolist()),
        foreground_p00_5=tuple(avg([fp.foreground_p00_5 for fp in fps]).tolist()),
        foreground_p99_5=tuple(avg([fp.foreground_p99_5 for fp in fps]).tolist()),
    )


@dataclass(frozen=True)
class NnUNetPlan:
    """nnU-Net v2's 2D configuration (the ``configurations['2d']`` part of its plans.json).

    ``strides[0]`` is (1, 1); one entry of ``strides``/``kernel_sizes``/``features_per_stage``
    per resolution stage. ``normalization`` is nnU-Net's scheme for non-CT channels;
    ``fingerprint`` is the (merged) fingerprint the plan came from, or ``None``.
    """

    patch_size: tuple[int, int]
    batch_size: int
    num_pool_per_axis: tuple[int, int]
    strides: tuple[tuple[int, int], ...]
    kernel_sizes: tuple[tuple[int, int], ...]
    features_per_stage: tuple[int, ...]
    in_channels: int
    num_classes: int
    normalization: str
    use_mask_for_norm: bool
    fingerprint: DataFingerprint | None

    @property
    def divisor(self) -> tuple[int, int]:
        """Input sides must be multiples of this (2 ** poolings per axis)."""
        return (2 ** self.num_pool_per_axis[0], 2 ** self.num_pool_per_axis[1])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible dictionary (lists, numbers, strings, None)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NnUNetPlan:
        fields = {k: _tuples(v) for k, v in d.items() if k != "fingerprint"}
        fp = d.get("fingerprint")
        return cls(**fields, fingerprint=None if fp is None else DataFingerprint.from_dict(fp))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class _Topology:
    num_pool_per_axis: tuple[int, int]
    strides: tuple[tuple[int, int], ...]
    kernel_sizes: tuple[tuple[int, int], ...]
    patch_size: tuple[int, int]

    @property
    def divisor(self) -> tuple[int, int]:
        return (2 ** self.num_pool_per_axis[0], 2 ** self.num_pool_per_axis[1])


def _topology(patch: Sequence[int]) -> _Topology:
    """nnU-Net's ``get_pool_and_conv_props`` for isotropic 2D pixels: halve every axis that is
    still at least twice the minimal feature-map edge (4 px), and when only one axis can be
    halved, only while it is at least 3x that edge; 3x3 convolutions throughout (isotropic);
    then round the patch up to a multiple of 2 ** poolings."""
    size = [float(s) for s in patch]
    pools = [0, 0]
    strides = [(1, 1)]
    while True:
        axes = [a for a in (0, 1) if size[a] >= 2 * _MIN_FEATURE_MAP_EDGE]
        if not axes or (len(axes) == 1 and size[axes[0]] < 3 * _MIN_FEATURE_MAP_EDGE):
            break
        for a in axes:
            pools[a] += 1
            size[a] = np.ceil(size[a] / 2)
        strides.append((2 if 0 in axes else 1, 2 if 1 in axes else 1))
    div = [2**p for p in pools]
    padded = tuple(int(-(-s // d) * d) for s, d in zip(patch, div))
    return _Topology((pools[0], pools[1]), tuple(strides), ((3, 3),) * len(strides), padded)


def _features_per_stage(num_stages: int) -> tuple[int, ...]:
    return tuple(min(_MAX_FEATURES_2D, _BASE_FEATURES * 2**i) for i in range(num_stages))


def _feature_map_size(topo: _Topology, in_channels: int, num_classes: int) -> int:
    """nnU-Net's VRAM proxy: summed feature-map sizes of the network for one patch (built on
    the meta device, so nothing is allocated)."""
    with torch.device("meta"):
        net = _plain_conv_unet(
            topo.strides,
            topo.kernel_sizes,
            _features_per_stage(len(topo.strides)),
            in_channels,
            num_classes,
        )
    return int(net.compute_conv_feature_map_size(topo.patch_size))


def plan_nnunet_2d(
    fp: DataFingerprint | None,
    image_size: int,
    num_classes: int,
    in_channels: int = 3,
    gpu_memory_gb: float = _REF_GB,
) -> NnUNetPlan:
    """nnU-Net v2's 2D experiment planning (``ExperimentPlanner.get_plans_for_configuration``).

    fedfms resizes every image to ``image_size``, which plays the role of nnU-Net's median
    shape after resampling (pixels are isotropic). Rules:

    - initial patch: min(2048, image_size) per axis;
    - topology (:func:`_topology`): pool while the feature map stays >= 4 px, 3x3 kernels;
    - features 32 * 2**stage, capped at 512; two convolutions per stage, encoder and decoder;
    - while the estimated feature-map size for a batch of 2 exceeds the reference scaled to
      ``gpu_memory_gb``, shrink the patch along its longest axis by one divisor step;
    - batch size from the memory headroom, capped so a batch covers at most 5% of the pixels
      of the (federated) data set, at least 2;
    - normalisation: z-score (nnU-Net's scheme for non-CT channels), restricted to the
      non-zero region when cropping to it would shrink the median image below 3/4.

    ``fp`` may be ``None`` (no data seen): then no batch-size cap and no masked normalisation.
    """
    reference = _REF_VRAM_2D * gpu_memory_gb / _REF_GB
    side = min(_INITIAL_PATCH_2D, image_size)
    topo = _topology((side, side))
    estimate = _feature_map_size(topo, in_channels, num_classes)
    while estimate / _REF_BATCH_2D * _MIN_BATCH > reference:
        patch = list(topo.patch_size)
        axis = int(np.argsort([p / image_size for p in patch], kind="stable")[-1])
        trial = list(patch)
        trial[axis] -= topo.divisor[axis]
        patch[axis] -= _topology(trial).divisor[axis]
        topo = _topology(patch)
        estimate = _feature_map_size(topo, in_channels, num_classes)
    batch_size = round(reference / estimate * _REF_BATCH_2D)
    if fp is not None:
        dataset_pixels = fp.num_samples * image_size**2
        covered = dataset_pixels * _MAX_DATASET_COVERED / np.prod(topo.patch_size)
        batch_size = min(batch_size, round(covered))
    return NnUNetPlan(
        patch_size=topo.patch_size,
        batch_size=max(batch_size, _MIN_BATCH),
        num_pool_per_axis=topo.num_pool_per_axis,
        strides=topo.strides,
        kernel_sizes=topo.kernel_sizes,
        features_per_stage=_features_per_stage(len(topo.strides)),
        in_channels=in_channels,
        num_classes=num_classes,
        normalization="ZScoreNormalization",
        use_mask_for_norm=fp is not None
        and fp.median_relative_size_after_cropping < _CROP_RATIO_FOR_MASKED_NORM,
        fingerprint=fp,
    )


def _plain_conv_unet(
    strides: Sequence[Sequence[int]],
    kernel_sizes: Sequence[Sequence[int]],
    features_per_stage: Sequence[int],
    in_channels: int,
    num_classes: int,
) -> PlainConvUNet:
    """nnU-Net v2's default 2D network: PlainConvUNet, InstanceNorm (affine), LeakyReLU,
    biased convolutions, no dropout; deep supervision off (one full-resolution output), its
    lower-resolution heads removed so that every parameter trains and no idle weight travels."""
    n_stages = len(strides)
    net = PlainConvUNet(
        input_channels=in_channels,
        n_stages=n_stages,
        features_per_stage=list(features_per_stage),
        conv_op=nn.Conv2d,
        kernel_sizes=[list(k) for k in kernel_sizes],
        strides=[list(s) for s in strides],
        n_conv_per_stage=[_CONVS_PER_STAGE] * n_stages,
        num_classes=num_classes,
        n_conv_per_stage_decoder=[_CONVS_PER_STAGE] * (n_stages - 1),
        conv_bias=True,
        norm_op=nn.InstanceNorm2d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        deep_supervision=False,
    )
    net.decoder.seg_layers = nn.ModuleList([net.decoder.seg_layers[-1]])  # the only one used
    return net


def zscore_per_image(x: torch.Tensor, use_mask: bool) -> torch.Tensor:
    """nnU-Net's ZScoreNormalization, per image and channel: (x - mean) / max(std, 1e-8).

    With ``use_mask`` the statistics come from the non-zero region (any channel != 0) and
    pixels outside it are set to 0. ``x``: (B, C, H, W) -> (B, C, H, W).
    """
    x = x.float()
    if use_mask:
        mask = (x != 0).any(dim=1, keepdim=True).float()
    else:
        mask = torch.ones_like(x[:, :1])
    count = mask.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    mean = (x * mask).sum(dim=(2, 3), keepdim=True) / count
    std = (((x - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True).div(count).sqrt()
    return (x - mean) / std.clamp_min(1e-8) * mask


class BaselineSegmenter(nn.Module):
    """A fully convolutional segmenter with the fedfms contract.

    ``forward``: (B, 3, H, W) in [0, 1] -> optional per-image z-score -> zero-pad bottom/right
    to multiples of ``divisor`` -> ``net`` -> crop -> logits (B, C, H, W).
    """

    def __init__(
        self, net: nn.Module, divisor: tuple[int, int], zscore: bool, use_mask_for_norm: bool
    ):
        super().__init__()
        self.net = net
        self.divisor = divisor
        self.zscore = zscore
        self.use_mask_for_norm = use_mask_for_norm

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        x = zscore_per_image(images, self.use_mask_for_norm) if self.zscore else images
        x = F.pad(x, (0, -w % self.divisor[1], 0, -h % self.divisor[0]))
        return self.net(x)[..., :h, :w]


def build_baseline(cfg: ModelConfig, plan: NnUNetPlan | None = None) -> BaselineSegmenter:
    """The baseline named by ``cfg.arch``: ``unet`` (MONAI) or ``nnunet`` (planned PlainConvUNet).

    ``plan`` applies to ``nnunet`` only; without one, the plan is made from ``cfg.image_size``
    alone (:func:`plan_nnunet_2d` with no fingerprint). Returns a module mapping
    (B, 3, S, S) in [0, 1] to logits (B, cfg.num_classes, S, S), all parameters trainable.
    """
    if cfg.arch == "unet":
        from monai.networks.nets import UNet

        channels = tuple(cfg.unet_channels)
        net = UNet(
            spatial_dims=2,
            in_channels=3,
            out_channels=cfg.num_classes,
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=cfg.unet_res_units,
        )
        down = 2 ** (len(channels) - 1)
        return BaselineSegmenter(net, (down, down), zscore=False, use_mask_for_norm=False)
    if cfg.arch == "nnunet":
        if plan is None:
            plan = plan_nnunet_2d(
                None, cfg.image_size, cfg.num_classes, gpu_memory_gb=cfg.nnunet_gpu_memory_gb
            )
        if (plan.num_classes, plan.in_channels) != (cfg.num_classes, 3):
            raise ValueError(
                f"nnU-Net plan is for {plan.in_channels} input channels and {plan.num_classes} "
                f"classes, the model config asks for 3 and {cfg.num_classes}"
            )
        net = _plain_conv_unet(
            plan.strides,
            plan.kernel_sizes,
            plan.features_per_stage,
            plan.in_channels,
            plan.num_classes,
        )
        net.apply(PlainConvUNet.initialize)
        return BaselineSegmenter(
            net, plan.divisor, zscore=True, use_mask_for_norm=plan.use_mask_for_norm
        )
    raise ValueError(f"not a baseline architecture: {cfg.arch!r} (expected 'unet' or 'nnunet')")
