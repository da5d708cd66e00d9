"""MoNuSeg converter: one organ folder of cases with one PNG per nucleus -> one binary-nuclei client.

Layout (as published by the challenge repositories)::

    ORGAN/CASE/images/CASE.png          # 1000x1000 RGB(A) H&E tile
    ORGAN/CASE/masks/mask_NNNN.png      # one binary (0/255) PNG per nucleus

The nuclei mask is the union of the instance masks. Large tiles are resized to the model size
(the paper) or, with ``tile``, cut into square tiles first (each tile one sample, all tiles of a
case share its case id, so the split keeps them together).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedfms.data.manifest import SampleRecord, safe_id
from fedfms.data.prepare.common import OutputSpec, PrepareReport, RawSample, tiled, write_samples
from fedfms.data.prepare.intensity import image_to_unit
from fedfms.data.prepare.io import is_image_file, read_image, read_mask
from fedfms.data.validate import Problems, check_label_values, check_not_empty, check_same_shape

CLASS_NAMES = ["nuclei"]
INSTANCE_VALUES = (0, 1, 255)
CHUNK = 32


def find_cases(organ_dir: Path, problems: Problems) -> list[Path]:
    """Case folders (with ``images/`` and ``masks/``) of one organ; an empty organ is a problem."""
    cases = sorted(p for p in organ_dir.iterdir() if p.is_dir() and (p / "images").is_dir())
    for case in cases:
        if not (case / "masks").is_dir():
            problems.add(case, "case folder has images/ but no masks/")
    check_not_empty(len(cases), organ_dir, problems, "case folders with images/ and masks/")
    return cases


def load_case(case: Path, root: Path, problems: Problems) -> RawSample | None:
    """Read the tile and the union of its instance masks: image (3, H, W), mask (1, H, W)."""
    images = [p for p in sorted((case / "images").iterdir()) if is_image_file(p)]
    instances = [p for p in sorted((case / "masks").iterdir()) if is_image_file(p)]
    if len(images) != 1:
        problems.add(case / "images", f"expected one image per case, found {len(images)}")
        return None
    if not instances:
        problems.add(case / "masks", "no instance masks (an unannotated tile would train as all background)")
        return None
    image = read_image(images[0], problems)
    if image is None:
        return None
    union = np.zeros(image.shape[:2], dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=4) as pool:  # PNG decoding releases the GIL
        for start in range(0, len(instances), CHUNK):  # bounded memory: CHUNK decoded masks at a time
            chunk = instances[start : start + CHUNK]
            for path, mask in zip(chunk, pool.map(lambda p: read_mask(p, problems), chunk)):
                if (
                    mask is not None
                    and check_same_shape(image.shape[:2], mask.shape, images[0], path, problems)
                    and check_label_values(mask, INSTANCE_VALUES, path, problems, hint=" (binary instance mask)")
                ):
                    np.maximum(union, mask, out=union, casting="unsafe")
    record = SampleRecord(
        id=safe_id(case.name), case_id=case.name, source=images[0].relative_to(root).as_posix(),
        mask_source=(case / "masks").relative_to(root).as_posix(),
    )
    return RawSample(image_to_unit(image), union[None] != 0, record)


def prepare_monuseg(
    src: Path, out: OutputSpec, tile: int | None = None, limit: int | None = None
) -> PrepareReport:
    """Prepare MoNuSeg as one client (class ``nuclei``): one organ folder, or a whole MoNuSeg
    root with every organ's cases pooled (MoNuSeg as one site among other nuclei sources, as
    in the paper; one client per organ is :func:`organ_folders` + one call per organ).

    ``tile``: cut each source tile into ``tile``-pixel squares before resizing (None: resize the
    whole tile). ``limit``: only the first N cases (quick trials, tests).
    """
    src = Path(src)
    problems = Problems(source=src)
    cases = [case for organ in organ_folders(src) or [src] for case in find_cases(organ, problems)]
    cases = cases[:limit] if limit else cases
    problems.raise_if_any()

    def convert(case: Path, problems: Problems, report: PrepareReport) -> Iterator[RawSample]:
        raw = load_case(case, src, problems)
        if raw is not None:
            yield from tiled(raw, tile)

    settings = {"converter": "monuseg", "source": str(src), "mask": "union of instance masks",
                "image_scaling": "uint8 / 255", "tile": tile}
    return write_samples(cases, convert, out, CLASS_NAMES, settings, problems, unit="case")


def organ_folders(root: Path) -> list[Path]:
    """Organ folders under a MoNuSeg root (folders whose sub-folders are cases)."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and any((c / "images").is_dir() for c in p.iterdir()))
