"""3D NIfTI converter: image volumes + label volumes -> 2D slices (prostate MRI, FeTS brain tumour).

Layouts::

    SRC/images/CASE[suffix].nii.gz   SRC/labels/CASE[suffix].nii.gz   # also imagesTr/labelsTr, masks/
    SRC/CASE/CASE_t1ce.nii.gz        SRC/CASE/CASE_seg.nii.gz         # one folder per case (FeTS/BraTS)

Per volume: clip at the ``upper_percentile`` (99th), min-max scale to [0, 1]; slice along
``axis`` (depth, NIfTI axis 2 by default); grey -> 3 channels by ``copy`` (stored once, repeated
on load) or ``neighbours`` (slices k-1, k, k+1, edge slices repeated). Labels go through a
label map (FeTS: 4 -> enhancing tumour, 1 and 2 -> background); any value not in the map is an
error. Empty slices: ``keep_empty_every=1`` keeps all, ``k`` keeps every k-th empty slice
(``empty_rule="count"``: the 1st, (k+1)-th, ... empty slice of a volume; ``"index"``: an empty
slice whose index is a multiple of k, as the reference code does for FeTS), 0 drops them all.
``drop_edge_slices`` skips the first and last slice of each volume (the reference's FeTS rule).

Before any voxel is read, headers are checked: dimensionality, image/label shape and affine,
pairing, duplicate case ids, empty client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np

from fedfms.data.manifest import SampleRecord, safe_id
from fedfms.data.prepare.common import OutputSpec, PrepareReport, RawSample, write_samples
from fedfms.data.prepare.encodings import MaskEncoding, label_map_encoding
from fedfms.data.prepare.images import IMAGE_DIR_NAMES, MASK_DIR_NAMES
from fedfms.data.prepare.intensity import clip_and_scale
from fedfms.data.prepare.io import NIFTI_SUFFIXES, split_suffix, warn_broken_links
from fedfms.data.validate import (
    Problems,
    check_finite,
    check_ndim,
    check_not_empty,
    check_same_affine,
    check_same_shape,
    check_unique,
    check_unpaired,
)

Channels = Literal["copy", "neighbours"]


class SliceRules(Protocol):
    """The slicing rules :func:`kept_slices` follows (fields of :class:`NiftiOptions`)."""

    channels: Channels
    keep_empty_every: int
    empty_rule: Literal["count", "index"]
    drop_edge_slices: bool


@dataclass(frozen=True)
class NiftiOptions:
    """Classes, label map, channel rule, empty-slice policy and pairing rules of a NIfTI source."""

    class_names: list[str]
    label_map: MaskEncoding
    channels: Channels = "copy"
    keep_empty_every: int = 1
    empty_rule: Literal["count", "index"] = "count"
    drop_edge_slices: bool = False
    axis: int = 2
    upper_percentile: float = 99.0
    image_suffix: str = ""
    mask_suffix: str = ""
    skip_unpaired: bool = False
    limit: int | None = None


#: The paper's two volume datasets. ``fets`` is FeTS as the paper describes it (enhancing tumour,
#: label 4); ``fets-reference`` as the reference code prepares it, from which the paper's
#: numbers come: labels 1 and 4 (necrotic core + enhancing tumour, BraTS's tumour core), first
#: and last slice of each volume dropped, an empty slice kept when its index is a multiple of 5.
PRESETS: dict[str, NiftiOptions] = {
    "prostate": NiftiOptions(["prostate"], label_map_encoding(1)),
    "fets": NiftiOptions(
        ["enhancing_tumour"], MaskEncoding("levels", {0: (), 1: (), 2: (), 4: (0,)}), channels="neighbours",
        keep_empty_every=5, image_suffix="_t1ce", mask_suffix="_seg",
    ),
    "fets-reference": NiftiOptions(
        ["tumour_core"], MaskEncoding("levels", {0: (), 1: (0,), 2: (), 4: (0,)}), channels="neighbours",
        keep_empty_every=5, empty_rule="index", drop_edge_slices=True, image_suffix="_t1ce", mask_suffix="_seg",
    ),
}


def preset(name: str, **overrides: Any) -> NiftiOptions:
    """A preset with some fields replaced (``None`` values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown NIfTI preset {name!r}; known: {', '.join(PRESETS)}")
    channels = overrides.get("channels")
    if channels is not None and channels not in get_args(Channels):  # as fedfms predict accepts them
        raise ValueError(f"--channels {channels!r}: expected {' or '.join(get_args(Channels))}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Volume:
    case_id: str
    image: Path
    mask: Path


def _nifti_by_case(folder: Path, suffix: str) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    warn_broken_links(folder)
    for path in sorted(folder.iterdir()):
        stem, ext = split_suffix(path)
        if path.is_file() and ext in NIFTI_SUFFIXES and stem.endswith(suffix):
            found.setdefault(stem[: len(stem) - len(suffix)], []).append(path)
    return found


def find_volumes(src: Path, options: NiftiOptions, problems: Problems) -> list[Volume]:
    """Pair image and label volumes (either layout); unpaired files and duplicate cases are problems."""
    image_dir = next((src / n for n in (*IMAGE_DIR_NAMES, "imagesTr") if (src / n).is_dir()), None)
    mask_dir = next((src / n for n in (*MASK_DIR_NAMES, "labelsTr") if (src / n).is_dir()), None)
    if image_dir is not None and mask_dir is not None:
        groups = [(_nifti_by_case(image_dir, options.image_suffix), _nifti_by_case(mask_dir, options.mask_suffix))]
    elif options.image_suffix and options.mask_suffix:
        groups = [
            (_nifti_by_case(d, options.image_suffix), _nifti_by_case(d, options.mask_suffix))
            for d in sorted(p for p in src.iterdir() if p.is_dir())
        ]
    else:
        groups = []
    volumes, lone_images, lone_masks = [], [], []
    for images, masks in groups:
        for case, paths in images.items():
            if case in masks:
                volumes.extend(Volume(case, p, masks[case][0]) for p in paths)
            else:
                lone_images.extend(str(p) for p in paths)
        lone_masks.extend(str(p) for case, ps in masks.items() if case not in images for p in ps)
    if not options.skip_unpaired:
        check_unpaired(lone_images, lone_masks, problems)
    check_unique(((v.case_id, str(v.image)) for v in volumes), problems, "case id")
    volumes = volumes[: options.limit] if options.limit else volumes
    check_not_empty(
        len(volumes), src, problems,
        "image/label volume pairs (images/ + labels/ folders, or case folders with --image-suffix/--mask-suffix)",
    )
    return volumes


def check_headers(volume: Volume, axis: int, problems: Problems) -> None:
    """Header-only checks: readable, 3D, same shape and affine for image and labels."""
    import nibabel as nib

    headers = []
    for path in (volume.image, volume.mask):
        try:
            img = nib.load(str(path))
        except Exception as err:  # noqa: BLE001 - any header error is a bad file to report
            problems.add(path, f"unreadable NIfTI header ({type(err).__name__}: {err})")
            return
        shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
        if not check_ndim(shape, (3,), path, problems, "volume"):
            return
        headers.append((shape, img.affine))
    (ishape, iaff), (mshape, maff) = headers
    if check_same_shape(ishape, mshape, volume.image, volume.mask, problems):
        check_same_affine(iaff, maff, volume.image, volume.mask, problems)
    if not -3 <= axis < 3:
        problems.add(volume.image, f"slicing axis {axis} does not exist in a 3D volume")


def _load(path: Path, problems: Problems, labels: bool) -> np.ndarray | None:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj) if labels else img.get_fdata(dtype=np.float32)
    except Exception as err:  # noqa: BLE001 - truncated data raise various decoder errors
        problems.add(path, f"unreadable or truncated file ({type(err).__name__}: {err})")
        return None
    data = data.reshape(data.shape[:3])
    return data if check_finite(data, path, problems) else None


def slice_channels(volume: np.ndarray, k: int, channels: Channels) -> np.ndarray:
    """(D, H, W) volume -> (1, H, W) slice k (``copy``) or (3, H, W) slices k-1, k, k+1 (``neighbours``)."""
    if channels == "copy":
        return volume[k : k + 1]
    last = volume.shape[0] - 1
    return volume[[max(k - 1, 0), k, min(k + 1, last)]]


def kept_slices(
    scaled: np.ndarray, mask: np.ndarray, options: SliceRules, report: PrepareReport, record_of: Callable[[int], SampleRecord]
) -> Iterator[RawSample]:
    """Slices of a scaled ``(D, H, W)`` volume and its ``(C, D, H, W)`` mask that the empty-slice
    and edge rules keep, as samples whose records ``record_of(k)`` gives."""
    empty_seen = 0
    depth = scaled.shape[0]
    kept = range(1, depth - 1) if options.drop_edge_slices else range(depth)
    for k in kept:
        if not mask[:, k].any():
            empty_seen += 1
            position = k if options.empty_rule == "index" else empty_seen - 1
            if options.keep_empty_every == 0 or position % options.keep_empty_every:
                report.skipped_empty += 1
                continue
        yield RawSample(slice_channels(scaled, k, options.channels), mask[:, k], record_of(k))


def volume_slices(volume: Volume, src: Path, options: NiftiOptions, problems: Problems, report: PrepareReport) -> Iterator[RawSample]:
    """Read one volume pair and yield its kept slices at source resolution."""
    image = _load(volume.image, problems, labels=False)
    labels = _load(volume.mask, problems, labels=True)
    if image is None or labels is None:
        return
    depth_first = np.moveaxis(labels, options.axis, 0)
    mask = options.label_map.decode(depth_first, len(options.class_names), volume.mask, problems)  # (C, D, H, W)
    if mask is None:
        return
    if not mask.any():
        report.warnings.append(f"{volume.mask}: no voxel of any class {options.class_names} (all background); "
                               "its slices count as empty")
    scaled = np.moveaxis(clip_and_scale(image, options.upper_percentile), options.axis, 0)

    def record_of(k: int) -> SampleRecord:
        return SampleRecord(
            id=safe_id(f"{volume.case_id}_z{k:04d}"), case_id=volume.case_id, source=volume.image.relative_to(src).as_posix(),
            mask_source=volume.mask.relative_to(src).as_posix(), slice_index=k,
        )

    yield from kept_slices(scaled, mask, options, report, record_of)


def prepare_nifti(src: Path, out: OutputSpec, options: NiftiOptions) -> PrepareReport:
    """Prepare a folder of NIfTI volumes as one client (see the module docstring)."""
    src = Path(src)
    problems = Problems(source=src)
    volumes = find_volumes(src, options, problems)
    for volume in volumes:
        check_headers(volume, options.axis, problems)
    problems.raise_if_any()
    settings = {
        "converter": "nifti", "source": str(src), "label_map": options.label_map.describe(options.class_names),
        "intensity": f"per volume: clip at percentile {options.upper_percentile}, min-max to [0, 1]",
        "upper_percentile": options.upper_percentile, "channels": options.channels,
        "keep_empty_every": options.keep_empty_every, "empty_rule": options.empty_rule,
        "drop_edge_slices": options.drop_edge_slices, "slice_axis": options.axis,
    }
    return write_samples(
        volumes, lambda v, p, r: volume_slices(v, src, options, p, r), out, options.class_names, settings, problems,
        unit="volume",
    )
