"""nnU-Net v2's dataset fingerprint, computed at each site and merged at the server.

A site runs nnunetv2's own per-case steps on its training split (``crop_to_nonzero`` and
``DatasetFingerprintExtractor.collect_foreground_intensities``, the same seeded sampling of
foreground pixels) and sends a :class:`SiteFingerprint`: per case its shape after cropping, its
spacing and the fraction of it left after cropping; per channel the count, sum, sum of squares,
minimum and maximum of its sampled foreground intensities and a 1001-point quantile table of them.
No pixel leaves the site.

:func:`merge_fingerprints` gives the fingerprint nnunetv2 would compute on the pooled data:

- exact: ``spacings``, ``shapes_after_crop``, ``median_relative_size_after_cropping`` and, per
  channel, ``mean``, ``std``, ``min``, ``max`` -- provided every site samples as many pixels
  per case as the pooled extraction would (nnU-Net's 1e8 / number of cases; the server sends it);
- approximate: ``median``, ``percentile_00_5``, ``percentile_99_5``, read from the mixture of the
  sites' quantile tables (pooled quantiles need the pixels themselves).

For nnU-Net's z-score normalisation of non-CT images none of the intensity statistics change the
preprocessing; they are kept because the plans carry them and CT normalisation uses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

from fedfms.nnunet.workspace import SPACING_2D

FOREGROUND_SAMPLES_TOTAL = 10e7  # DatasetFingerprintExtractor.num_foreground_voxels_for_intensitystats
QUANTILE_LEVELS = np.linspace(0.0, 100.0, 1001)


def samples_per_case(total_cases: int, total_samples: float = FOREGROUND_SAMPLES_TOTAL) -> int:
    """Foreground pixels nnU-Net samples from each case of a data set of ``total_cases``."""
    return int(total_samples // total_cases)


@dataclass(frozen=True)
class ChannelSummary:
    """Sufficient statistics of one channel's sampled foreground intensities at one site."""

    count: int
    total: float
    total_sq: float
    minimum: float
    maximum: float
    quantiles: tuple[float, ...]


@dataclass(frozen=True)
class SiteFingerprint:
    """What one site sends for planning (see the module docstring)."""

    class_names: tuple[str, ...]
    spacings: tuple[tuple[float, ...], ...]
    shapes_after_crop: tuple[tuple[int, ...], ...]
    relative_sizes_after_crop: tuple[float, ...]
    channels: tuple[ChannelSummary, ...]

    @property
    def cases(self) -> int:
        return len(self.spacings)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SiteFingerprint:
        return cls(class_names=tuple(d["class_names"]), spacings=tuple(map(tuple, d["spacings"])),
                   shapes_after_crop=tuple(map(tuple, d["shapes_after_crop"])),
                   relative_sizes_after_crop=tuple(d["relative_sizes_after_crop"]),
                   channels=tuple(ChannelSummary(**{**c, "quantiles": tuple(c["quantiles"])}) for c in d["channels"]))


def site_fingerprint(cases: Iterable[tuple[np.ndarray, np.ndarray]], class_names: Sequence[str],
                     samples: int) -> SiteFingerprint:
    """Fingerprint of one site's cases, each ``(data (c, 1, H, W), seg (1, 1, H, W))`` as
    :func:`fedfms.nnunet.workspace.nnunet_case` gives them; ``samples`` foreground pixels per case."""
    shapes, relative, per_channel = [], [], None
    for data, seg in cases:
        cropped, seg_cropped, _ = crop_to_nonzero(data, seg)
        intensities, _ = DatasetFingerprintExtractor.collect_foreground_intensities(seg_cropped, cropped,
                                                                                    num_samples=samples)
        per_channel = per_channel or [[] for _ in intensities]
        for store, values in zip(per_channel, intensities, strict=True):
            store.append(np.asarray(values, dtype=np.float64))
        shapes.append(tuple(int(s) for s in cropped.shape[1:]))
        relative.append(float(np.prod(cropped.shape[1:]) / np.prod(data.shape[1:])))
    if per_channel is None:
        raise ValueError("cannot fingerprint a site without training cases")
    pooled = [np.concatenate(values) for values in per_channel]
    if not pooled[0].size:
        raise ValueError(f"no foreground pixel in any of the {len(shapes)} training cases of this site")
    channels = tuple(ChannelSummary(count=int(v.size), total=float(v.sum()), total_sq=float(np.square(v).sum()),
                                    minimum=float(v.min()), maximum=float(v.max()),
                                    quantiles=tuple(np.percentile(v, QUANTILE_LEVELS).tolist())) for v in pooled)
    return SiteFingerprint(class_names=tuple(class_names), spacings=(SPACING_2D,) * len(shapes),
                           shapes_after_crop=tuple(shapes), relative_sizes_after_crop=tuple(relative),
                           channels=channels)


def _mixture_percentile(summaries: Sequence[ChannelSummary], percent: float) -> float:
    """The ``percent`` percentile of the pooled samples, from the sites' quantile tables."""
    support = np.unique(np.concatenate([s.quantiles for s in summaries]))
    weights = np.array([s.count for s in summaries], dtype=np.float64)
    cdf = sum(w * np.interp(support, s.quantiles, QUANTILE_LEVELS, left=0.0, right=100.0)
              for w, s in zip(weights, summaries, strict=True)) / weights.sum()
    return float(np.interp(percent, cdf, support))


def _channel_properties(summaries: Sequence[ChannelSummary]) -> dict[str, float]:
    count = sum(s.count for s in summaries)
    mean = sum(s.total for s in summaries) / count
    variance = max(sum(s.total_sq for s in summaries) / count - mean**2, 0.0)
    return {"mean": mean, "median": _mixture_percentile(summaries, 50.0), "std": float(np.sqrt(variance)),
            "min": min(s.minimum for s in summaries), "max": max(s.maximum for s in summaries),
            "percentile_99_5": _mixture_percentile(summaries, 99.5),
            "percentile_00_5": _mixture_percentile(summaries, 0.5)}


def merge_fingerprints(sites: Sequence[SiteFingerprint]) -> dict[str, Any]:
    """The federation's fingerprint, in nnunetv2's ``dataset_fingerprint.json`` layout."""
    if not sites:
        raise ValueError("no site fingerprint to merge")
    names = {site.class_names for site in sites}
    if len(names) > 1:
        raise ValueError(f"sites disagree on classes: {sorted(names)}")
    return {
        "spacings": [list(s) for site in sites for s in site.spacings],
        "shapes_after_crop": [list(s) for site in sites for s in site.shapes_after_crop],
        "foreground_intensity_properties_per_channel": {
            str(c): _channel_properties([site.channels[c] for site in sites]) for c in range(len(sites[0].channels))},
        "median_relative_size_after_cropping": float(np.median([r for site in sites
                                                                for r in site.relative_sizes_after_crop])),
    }
