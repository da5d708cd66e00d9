"""What every converter shares: the source-resolution sample, the write loop, the report, tiling.

A converter does two things: (1) find its source units (volumes, image/mask pairs, cases) and
check their structure (pairing, duplicates, empty client, headers); (2) turn each unit into
:class:`RawSample` s at source resolution. :func:`write_samples` does the rest: content problems
are collected over all units, samples are resized and written into a temporary folder, and the
client is published only if no problem was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from fedfms.data.manifest import SampleRecord, check_client_name
from fedfms.data.resize import resize_image, resize_mask
from fedfms.data.validate import Problems
from fedfms.data.writer import ClientWriter

Unit = TypeVar("Unit")


@dataclass
class RawSample:
    """One sample at source resolution: image (K, H, W) float32 in [0, 1], mask (C, H, W) bool."""

    image: np.ndarray
    mask: np.ndarray
    record: SampleRecord


@dataclass
class PrepareReport:
    """What a preparation did, for the command's summary."""

    client_dir: Path
    samples: int = 0
    cases: int = 0
    skipped_empty: int = 0
    foreground_fraction: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        fg = ", ".join(f"{f:.3%}" for f in self.foreground_fraction)
        lines = [
            f"{self.client_dir}: {self.samples} samples from {self.cases} cases"
            + (f", {self.skipped_empty} empty slices skipped" if self.skipped_empty else "")
            + (f"; foreground per class {fg}" if fg else ""),
            *(f"  warning: {w}" for w in self.warnings),
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class OutputSpec:
    """Where and how to write: target root, client name, sizes, writer mode, progress bar (drawn
    only when stderr is a terminal, so logs get no ``\\r`` frames)."""

    out_root: Path
    client: str
    image_size: int = 1024
    mask_size: int = 256
    mode: str = "create"
    progress: bool = True

    def __post_init__(self) -> None:
        check_client_name(self.client)  # before anything is read or written


def write_samples(
    units: Sequence[Unit],
    convert: Callable[[Unit, Problems, PrepareReport], Iterable[RawSample]],
    out: OutputSpec,
    class_names: list[str],
    preprocessing: dict[str, Any],
    problems: Problems,
    report: PrepareReport | None = None,
    unit: str = "file",
) -> PrepareReport:
    """Convert every unit, resize, write; publish the client only if ``problems`` stays empty.
    The progress bar (only on a terminal) counts in ``unit`` (file, case, volume, image).

    Raises :class:`~fedfms.data.validate.DataValidationError` listing every problem; the target
    folder is then left as it was.
    """
    from tqdm import tqdm

    report = report or PrepareReport(out.out_root / out.client)
    settings = {**preprocessing, "image_size": out.image_size, "mask_size": out.mask_size}
    fg_sum = np.zeros(len(class_names))
    cases: set[str] = set()
    with ClientWriter(out.out_root, out.client, class_names, out.image_size, out.mask_size, settings, out.mode) as writer:
        for item in tqdm(units, desc=f"prepare {out.client}", unit=unit, disable=None if out.progress else True,
                         leave=False):
            for raw in convert(item, problems, report):
                if raw.mask.any() and raw.image.min() == raw.image.max():
                    where = raw.record.source + ("" if raw.record.slice_index is None else
                                                 f" slice {raw.record.slice_index}")
                    report.warnings.append(f"{where}: blank image (one value everywhere) with a labelled mask; "
                                           "check the image and its intensities")
                if problems:
                    continue  # keep checking the rest, but write nothing once something is wrong
                mask = resize_mask(raw.mask, out.mask_size)
                writer.add(resize_image(raw.image, out.image_size), mask, raw.record)
                fg_sum += mask.reshape(len(class_names), -1).mean(axis=1)
                cases.add(raw.record.case_id)
        problems.raise_if_any()
        if writer.samples_written == 0:
            problems.add(out.out_root / out.client, "empty client: every sample was skipped")
            problems.raise_if_any()
    report.samples = writer.samples_written
    report.cases = len(cases)
    report.foreground_fraction = list(fg_sum / max(report.samples, 1))
    return report


def tile_boxes(height: int, width: int, tile: int) -> list[tuple[int, int, int, int]]:
    """Square tiles ``(y, x, tile, tile)`` covering an image; the last row/column is aligned to the
    border (overlapping its neighbour) so no pixel is dropped. An image smaller than ``tile`` gives
    one box of the whole image."""

    def starts(n: int) -> Iterator[int]:
        if n <= tile:
            yield 0
            return
        yield from range(0, n - tile, tile)
        yield n - tile

    return [(y, x, min(tile, height), min(tile, width)) for y in starts(height) for x in starts(width)]


def crop(raw: RawSample, box: tuple[int, int, int, int], suffix: str) -> RawSample:
    """The tile ``box`` of a sample; its id gets ``suffix`` and its record the box."""
    y, x, h, w = box
    record = raw.record.model_copy(update={"id": f"{raw.record.id}{suffix}", "tile": box})
    return RawSample(raw.image[:, y : y + h, x : x + w], raw.mask[:, y : y + h, x : x + w], record)


def tiled(raw: RawSample, tile: int | None) -> Iterator[RawSample]:
    """The sample itself (``tile`` None) or its tiles, ids suffixed ``_tYYYYxXXXX``."""
    if not tile:
        yield raw
        return
    for box in tile_boxes(*raw.image.shape[1:], tile):
        yield crop(raw, box, f"_t{box[0]:04d}x{box[1]:04d}")
