"""Generic 2D converter: ``images/`` + ``masks/`` folders with matching file names.

Layouts found anywhere under the source folder (so published train/test splits just work)::

    SRC/images/x.png   SRC/masks/x.png              # one mask per image (an encoding decodes it)
    SRC/train/image/x.png  SRC/train/mask/x.png    # "image"/"mask" spellings, nested subsets
    SRC/images/x.png   SRC/masks/disc/x.png  SRC/masks/cup/x.png   # one binary mask per class

Or, with ``layout="side-by-side"``, each mask beside its image, told apart by ``mask_suffix``,
one folder per case (the folder is the case id; slices sorted numerically)::

    SRC/CASE/CASE_1.tif  SRC/CASE/CASE_1_mask.tif  SRC/CASE/CASE_2.tif ...

Formats: PNG, JPEG, TIFF, BMP, 2D NIfTI. Images: uint8 RGB / 255 (grey kept as one channel and
repeated to 3 on load); other dtypes percentile-clipped and min-max scaled. Sample ids are the
relative path of the image without the image-folder name (``train/x`` -> ``train__x``).
Case ids: the file stem, or the first group of ``case_regex`` on the stem, prefixed by the
subset path, so that slices ``00_00`` and ``00_01`` of case ``00`` share ``train/00``.

Unpaired files (an image without mask or a mask without image) are an error naming them, or,
with ``skip_unpaired``, a warning listing them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fedfms.data.manifest import SampleRecord, safe_id
from fedfms.data.prepare.common import OutputSpec, PrepareReport, RawSample, tiled, write_samples
from fedfms.data.prepare.encodings import MaskEncoding
from fedfms.data.prepare.intensity import image_to_unit
from fedfms.data.prepare.io import is_image_file, read_image, read_mask, split_suffix, warn_broken_links
from fedfms.data.validate import Problems, check_not_empty, check_same_shape, check_unique, check_unpaired

IMAGE_DIR_NAMES = ("images", "image", "imgs", "img")
MASK_DIR_NAMES = ("masks", "mask", "labels", "label", "gt")


@dataclass(frozen=True)
class Pair:
    """An image and its mask file(s): one, or one per class in class order."""

    key: str  # relative path without image-folder name and suffix, e.g. "train/00_00"
    image: Path
    masks: tuple[Path, ...]
    case: str | None = None  # the case id, where the layout gives it (side-by-side: the folder)


@dataclass(frozen=True)
class Discovery:
    pairs: list[Pair]
    unpaired_images: list[Path]
    unpaired_masks: list[Path]


def _files_by_stem(folder: Path, strip: str = "") -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    warn_broken_links(folder)
    for path in sorted(p for p in folder.iterdir() if is_image_file(p)):
        stem = split_suffix(path)[0]
        if strip and stem.endswith(strip):
            stem = stem[: -len(strip)]
        found.setdefault(stem, []).append(path)
    return found


def _image_folders(src: Path) -> Iterator[tuple[Path, Path]]:
    """(image folder, mask folder) pairs under ``src`` (including ``src`` itself)."""
    for folder in sorted([src, *(p for p in src.rglob("*") if p.is_dir())]):
        if folder.name.lower() not in IMAGE_DIR_NAMES:
            continue
        masks = [folder.parent / n for n in MASK_DIR_NAMES if (folder.parent / n).is_dir()]
        if masks:
            yield folder, masks[0]


def discover_pairs(src: Path, class_names: list[str], mask_suffix: str = "") -> Discovery:
    """Pair images with masks by stem; ``mask_suffix`` (e.g. ``_mask``) is stripped from mask stems.

    If the mask folder holds one sub-folder per class name, each class has its own mask file.
    """
    pairs, lone_images, lone_masks = [], [], []
    for image_dir, mask_dir in _image_folders(src):
        prefix = image_dir.parent.relative_to(src).as_posix()
        per_class = [mask_dir / c for c in class_names]
        mask_dirs = per_class if all(d.is_dir() for d in per_class) else [mask_dir]
        images = _files_by_stem(image_dir)
        masks = [_files_by_stem(d, mask_suffix) for d in mask_dirs]
        for stem, paths in images.items():
            mine = [m.get(stem, []) for m in masks]
            if all(mine):
                key = stem if prefix == "." else f"{prefix}/{stem}"
                pairs.extend(Pair(key, p, tuple(m[0] for m in mine)) for p in paths)
            else:
                lone_images.extend(paths)
        for m in masks:
            lone_masks.extend(p for stem, ps in m.items() if stem not in images for p in ps)
    return Discovery(pairs, lone_images, lone_masks)


def natural_key(text: str) -> list[int | str]:
    """Sort key with digit runs compared as numbers: ``CASE_2`` before ``CASE_10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def discover_side_by_side(src: Path, mask_suffix: str) -> Discovery:
    """Pair each image with the file of the same stem plus ``mask_suffix`` in the same folder;
    the folder (relative to ``src``) is the case, files directly in ``src`` are cases of their own."""
    if not mask_suffix:
        raise ValueError("the side-by-side layout tells masks from images by their suffix: give a mask suffix, e.g. _mask")
    pairs, lone_images, lone_masks = [], [], []
    for folder in sorted([src, *(p for p in src.rglob("*") if p.is_dir())]):
        files = _files_by_stem(folder)
        masks = {stem[: -len(mask_suffix)]: paths for stem, paths in files.items() if stem.endswith(mask_suffix)}
        images = {stem: paths for stem, paths in files.items() if not stem.endswith(mask_suffix)}
        prefix = folder.relative_to(src).as_posix()
        for stem, paths in images.items():
            if stem in masks:
                key = stem if prefix == "." else f"{prefix}/{stem}"
                pairs.extend(Pair(key, p, (masks[stem][0],), None if prefix == "." else prefix) for p in paths)
            else:
                lone_images.extend(paths)
        lone_masks.extend(p for stem, ps in masks.items() if stem not in images for p in ps)
    return Discovery(sorted(pairs, key=lambda p: natural_key(p.key)), lone_images, lone_masks)


def case_of(key: str, case_regex: str | None) -> str:
    """Case id of a pair key: the stem (or the regex's first group on it), with the subset prefix."""
    prefix, _, stem = key.rpartition("/")
    if case_regex:
        match = re.search(case_regex, stem)
        stem = match.group(1) if match else stem
    return f"{prefix}/{stem}" if prefix else stem


@dataclass(frozen=True)
class ImageOptions:
    """How to read one 2D source: classes, mask encoding, layout, pairing and case rules, tiling."""

    class_names: list[str]
    encoding: MaskEncoding
    layout: Literal["folders", "side-by-side"] = "folders"
    nested: bool = False
    case_regex: str | None = None
    mask_suffix: str = ""
    skip_unpaired: bool = False
    tile: int | None = None
    limit: int | None = None
    upper_percentile: float = 99.0


LOSSY_SUFFIXES = (".jpg", ".jpeg")


def load_pair(pair: Pair, options: ImageOptions, problems: Problems, src: Path) -> RawSample | None:
    """Read, check and decode one pair at source resolution (``None`` with problems recorded)."""
    image = read_image(pair.image, problems)
    raw_masks = [read_mask(m, problems) for m in pair.masks]
    if image is None or any(m is None for m in raw_masks):
        return None
    num = len(options.class_names)
    if len(raw_masks) == 1:
        mask = options.encoding.decode(raw_masks[0], num, pair.masks[0], problems)
    else:
        decoded = [options.encoding.decode(m, 1, p, problems) for m, p in zip(raw_masks, pair.masks)]
        mask = None if any(d is None for d in decoded) else np.concatenate(decoded)
    if mask is None or not all(check_same_shape(image.shape[:2], m.shape, pair.image, p, problems) for m, p in zip(raw_masks, pair.masks)):
        return None
    if options.nested:
        mask = np.logical_or.accumulate(mask[::-1])[::-1]
    record = SampleRecord(
        id=safe_id(pair.key), case_id=pair.case or case_of(pair.key, options.case_regex), source=_rel(pair.image, src),
        mask_source=",".join(_rel(m, src) for m in pair.masks),
    )
    return RawSample(image_to_unit(image, options.upper_percentile), mask, record)


def _rel(path: Path, src: Path) -> str:
    return path.relative_to(src).as_posix()


SPLIT_DIR_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "rois"}


def check_one_source(src: Path, folders: list[Path], problems: Problems, what: str) -> None:
    """``folders`` (below ``src``) may differ only by split folders (train/, test/, ...): folders
    of two sources (two hospitals' images/ + masks/) would silently merge into one client."""
    sources: dict[tuple[str, ...], Path] = {}
    for folder in folders:
        parts = tuple(p for p in folder.relative_to(src).parts if p.lower() not in SPLIT_DIR_NAMES)
        sources.setdefault(parts, folder)
    if len(sources) > 1:
        listing = ", ".join(str(p.relative_to(src)) for p in sources.values())
        problems.add(src, f"holds the {what} of {len(sources)} sources ({listing}), which would merge "
                          "into one client; prepare each folder as its own client (--client NAME)")


def collect_pairs(src: Path, options: ImageOptions, problems: Problems, report: PrepareReport) -> list[Pair]:
    """Structure checks: one source, pairing, duplicate sample ids, empty client; ``limit``
    keeps the first N."""
    if options.layout == "side-by-side":
        found = discover_side_by_side(src, options.mask_suffix)
        case_parents = {p.image.parent.parent for p in found.pairs if p.case is not None}
        check_one_source(src, sorted(case_parents), problems, "case folders")
    else:
        check_one_source(src, [image_dir.parent for image_dir, _ in _image_folders(src)], problems,
                         "images/ + masks/ folders")
        found = discover_pairs(src, options.class_names, options.mask_suffix)
    unpaired = [str(p) for p in (*found.unpaired_images, *found.unpaired_masks)]
    if unpaired and options.skip_unpaired:
        message = f"skipped {len(unpaired)} unpaired file(s): {', '.join(unpaired)}"
        warnings.warn(message, stacklevel=2)
        report.warnings.append(message)
    elif unpaired:
        check_unpaired(map(str, found.unpaired_images), map(str, found.unpaired_masks), problems)
    check_unique(((safe_id(p.key), str(p.image)) for p in found.pairs), problems, "sample id")
    pairs = found.pairs[: options.limit] if options.limit else found.pairs
    where = (f"image/mask pairs (each mask beside its image, named like it plus {options.mask_suffix!r})"
             if options.layout == "side-by-side" else "image/mask pairs (images/ + masks/ folders with matching names)")
    check_not_empty(len(pairs), src, problems, where)
    return pairs


def check_lossy_masks(pairs: list[Pair], options: ImageOptions, problems: Problems) -> None:
    """JPEG masks need a threshold: with an exact-value encoding their compression noise would
    become foreground. One problem for all of them, with their count."""
    lossy = [m for p in pairs for m in p.masks if m.suffix.lower() in LOSSY_SUFFIXES]
    if lossy and options.encoding.kind != "threshold":
        others = f" (and {len(lossy) - 1} more JPEG masks)" if len(lossy) > 1 else ""
        problems.add(lossy[0], f"JPEG mask{others} with the exact-value encoding {options.encoding.kind!r}: compression "
                               "noise would become foreground; use --preset threshold --classes NAME (foreground "
                               "above 127; --threshold to change it)")


def prepare_images(src: Path, out: OutputSpec, options: ImageOptions, converter: str = "images") -> PrepareReport:
    """Prepare a generic 2D source folder as one client (see the module docstring)."""
    src = Path(src)
    problems = Problems(source=src)
    report = PrepareReport(out.out_root / out.client)
    pairs = collect_pairs(src, options, problems, report)
    check_lossy_masks(pairs, options, problems)
    problems.raise_if_any()

    def convert(pair: Pair, problems: Problems, report: PrepareReport) -> Iterator[RawSample]:
        raw = load_pair(pair, options, problems, src)
        if raw is not None:
            yield from tiled(raw, options.tile)

    settings = {
        "converter": converter, "source": str(src), "mask_encoding": options.encoding.describe(options.class_names),
        "nested_classes": options.nested, "image_scaling": "uint8 / 255, else clip at percentile + min-max",
        "upper_percentile": options.upper_percentile, "tile": options.tile, "case_regex": options.case_regex,
        "layout": options.layout,
    }
    return write_samples(pairs, convert, out, options.class_names, settings, problems, report)
