"""A synthetic multi-center federation for the demo and the tests.

Each site is a "hospital" with its own acquisition: intensity scale, contrast (gamma), noise,
blur, a smooth bias field, colour tint, object-size distribution and number of samples. Each
sample shows one elliptical object ("disc"; with two classes a nested "cup" inside it). Samples
come in cases of a few consecutive "slices" of one object that grows and shrinks like an organ
through a volume, so case-wise splits mean something. Everything is deterministic by seed.

:func:`make_synthetic_federation` writes prepared client folders directly (fast: 4 clients x 20
samples at 64 px in well under a second). :func:`write_raw_federation` writes the same kind of
data as raw files (NIfTI volumes or PNG images + masks) to exercise the converters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from fedfms.data.manifest import MANIFEST_NAME, SampleRecord, read_manifest
from fedfms.data.writer import ClientExistsError, ClientWriter

SLICES_PER_CASE = 4
CLASS_NAMES = {1: ["disc"], 2: ["disc", "cup"]}


@dataclass(frozen=True)
class SiteStyle:
    """How one site's scanner and population look."""

    scale: float  # maximum intensity of the object
    background: float  # tissue level around the object
    gamma: float  # contrast curve
    noise: float  # Gaussian noise std
    blur: int  # box-blur radius in pixels at 64 px (scaled with the image)
    bias: float  # amplitude of the smooth multiplicative bias field
    radius: float  # mean object radius, fraction of the image side
    tint: tuple[float, float, float]


@dataclass(frozen=True)
class ObjectShape:
    """One ellipse (centre, semi-axes, angle in image fractions) and its cup ratio."""

    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    cup: float


def site_styles(num_clients: int, seed: int) -> list[SiteStyle]:
    """Distinct acquisition styles, one per site (deterministic by seed)."""
    rng = np.random.default_rng([seed, 7])
    return [
        SiteStyle(
            scale=float(rng.uniform(0.5, 1.0)), background=float(rng.uniform(0.1, 0.5)), gamma=float(rng.uniform(0.5, 1.6)), noise=float(rng.uniform(0.0, 0.12)),
            blur=int(rng.integers(0, 3)), bias=float(rng.uniform(0.0, 0.4)), radius=float(rng.uniform(0.12, 0.28)),
            tint=tuple(float(t) for t in rng.uniform(0.7, 1.0, size=3)),
        )
        for _ in range(num_clients)
    ]


def site_name(index: int) -> str:
    """``site-A``, ``site-B``, ... ``site-Z``, ``site-AA``, ..."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return f"site-{letters}"


def object_shapes(style: SiteStyle, count: int, rng: np.random.Generator) -> Iterator[tuple[int, int, ObjectShape]]:
    """``(case, slice, shape)`` for ``count`` samples, ``SLICES_PER_CASE`` slices per case."""
    for case in range(-(-count // SLICES_PER_CASE)):
        radius = style.radius * rng.uniform(0.7, 1.3)
        cy, cx = rng.uniform(0.35, 0.65, size=2)
        elong, angle, cup = rng.uniform(0.7, 1.3), rng.uniform(0, np.pi), rng.uniform(0.35, 0.7)
        for k in range(min(SLICES_PER_CASE, count - case * SLICES_PER_CASE)):
            grow = 0.75 + 0.25 * np.sin(np.pi * (k + 1) / (SLICES_PER_CASE + 1))
            yield case, k, ObjectShape(cy, cx, radius * grow * elong, radius * grow / elong, angle, cup)


def _ellipse_level(shape: ObjectShape, size: int) -> np.ndarray:
    """(size, size) normalised elliptic radius (< 1 inside the object), pixel centres."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    dy, dx = t[:, None] - shape.cy, t[None, :] - shape.cx
    c, s = np.cos(shape.angle), np.sin(shape.angle)
    return np.sqrt(((dy * c + dx * s) / shape.ry) ** 2 + ((dx * c - dy * s) / shape.rx) ** 2)


def render_mask(shape: ObjectShape, num_classes: int, size: int) -> np.ndarray:
    """(C, size, size) bool: disc, and cup (nested, inside the disc) when C = 2."""
    level = _ellipse_level(shape, size)
    return np.stack([level < 1.0, level < shape.cup][:num_classes])


def _box_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur of (..., H, W) with edge padding (via cumulative sums)."""
    for axis in (-2, -1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(image, pad, mode="edge"), axis=axis)
        n = image.shape[axis]
        image = (np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
                 - np.take(c, np.arange(n), axis=axis)) / (2 * radius + 1)
    return image


def render_image(shape: ObjectShape, style: SiteStyle, size: int, rng: np.random.Generator) -> np.ndarray:
    """(3, size, size) float32 in [0, 1]: object on textured background, then the site's look."""
    level = _ellipse_level(shape, size)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    grey = style.background + 0.3 * (level < 1.0) + 0.2 * (level < shape.cup) + 0.05 * np.sin(20 * t)[:, None]
    bias = 1.0 + style.bias * np.sin(np.pi * (t[:, None] + style.scale)) * np.cos(np.pi * t[None, :] * style.gamma)
    grey = np.clip(grey * bias, 0, 1) ** style.gamma * style.scale
    radius = round(style.blur * size / 64)
    if radius:
        grey = _box_blur(grey, radius)
    rgb = grey[None] * np.asarray(style.tint, dtype=np.float32)[:, None, None]
    rgb = rgb + rng.normal(0.0, style.noise, size=rgb.shape).astype(np.float32)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _counts(num_clients: int, samples_per_client: Sequence[int] | None, seed: int) -> list[int]:
    if samples_per_client is None:
        return [int(n) for n in np.random.default_rng([seed, 11]).integers(12, 29, size=num_clients)]
    if len(samples_per_client) != num_clients:
        raise ValueError(f"samples_per_client has {len(samples_per_client)} entries for {num_clients} clients")
    return list(samples_per_client)


def _site_samples(index: int, style: SiteStyle, count: int, seed: int) -> Iterator[tuple[int, int, ObjectShape, np.random.Generator]]:
    rng = np.random.default_rng([seed, index])
    for case, k, shape in object_shapes(style, count, rng):
        yield case, k, shape, rng


def make_synthetic_federation(
    root: Path,
    num_clients: int = 4,
    num_classes: int = 1,
    image_size: int = 64,
    mask_size: int = 16,
    samples_per_client: Sequence[int] | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``num_clients`` prepared client folders ``root/site-A`` ... and return their paths.

    Images (3, image_size, image_size), masks (num_classes, mask_size, mask_size); default sample
    counts differ per site (12..28). Existing synthetic clients of the same names are replaced;
    any other prepared client of those names only with ``overwrite`` (checked for every site
    before anything is written: :class:`ClientExistsError` names the folder).
    """
    if num_classes not in CLASS_NAMES:
        raise ValueError(f"num_classes must be 1 or 2, not {num_classes}")
    root = Path(root)
    for index in range(num_clients):
        existing = root / site_name(index)
        if not overwrite and (existing / MANIFEST_NAME).is_file():
            converter = read_manifest(existing).preprocessing.get("converter")
            if converter != "synthetic":
                raise ClientExistsError(f"{existing}: holds a prepared client that is not synthetic (converter "
                                        f"{converter!r}); use --overwrite to replace it, or another folder")
    paths = []
    for index, (style, count) in enumerate(zip(site_styles(num_clients, seed), _counts(num_clients, samples_per_client, seed))):
        name = site_name(index)
        settings = {"converter": "synthetic", "seed": seed, "style": style.__dict__}
        with ClientWriter(root, name, CLASS_NAMES[num_classes], image_size, mask_size, settings, mode="overwrite") as writer:
            for case, k, shape, rng in _site_samples(index, style, count, seed):
                record = SampleRecord(id=f"case{case:03d}_s{k}", case_id=f"case{case:03d}", source="synthetic", slice_index=k)
                writer.add(render_image(shape, style, image_size, rng), render_mask(shape, num_classes, mask_size), record)
        paths.append(root / name)
    return paths


def write_raw_federation(
    root: Path,
    fmt: Literal["nifti", "png"],
    num_clients: int = 3,
    num_classes: int = 1,
    image_size: int = 64,
    samples_per_client: Sequence[int] | None = None,
    seed: int = 0,
) -> list[Path]:
    """The same kind of federation as raw source files, one folder per site.

    ``nifti``: ``site/images/caseNNN.nii.gz`` grey volumes (H, W, slices) in scanner-like units
    with a per-site voxel spacing, and ``site/labels/caseNNN.nii.gz`` (0 background, 1 disc,
    2 cup). ``png``: ``site/images/caseNNN_sK.png`` RGB and ``site/masks/caseNNN_sK.png`` grey
    (0 background, 128 disc, 255 cup: the ``grey-disc-cup`` encoding; 0/255 with one class).
    """
    import nibabel as nib
    from PIL import Image

    if num_classes not in CLASS_NAMES:
        raise ValueError(f"num_classes must be 1 or 2, not {num_classes}")
    root = Path(root)
    sites = []
    for index, (style, count) in enumerate(zip(site_styles(num_clients, seed), _counts(num_clients, samples_per_client, seed))):
        site = root / site_name(index)
        (site / "images").mkdir(parents=True, exist_ok=True)
        (site / "labels" if fmt == "nifti" else site / "masks").mkdir(exist_ok=True)
        volumes: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for case, k, shape, rng in _site_samples(index, style, count, seed):
            image = render_image(shape, style, image_size, rng)
            labels = render_mask(shape, num_classes, image_size).sum(axis=0).astype(np.uint8)  # 0, 1, 2
            if fmt == "png":
                stem = f"case{case:03d}_s{k}"
                Image.fromarray(np.rint(image.transpose(1, 2, 0) * 255).astype(np.uint8)).save(site / "images" / f"{stem}.png")
                levels = np.array([0, 255] if num_classes == 1 else [0, 128, 255], dtype=np.uint8)
                Image.fromarray(levels[labels]).save(site / "masks" / f"{stem}.png")
            else:
                volumes.setdefault(case, []).append((image.mean(axis=0) * 1000.0 * style.scale, labels))
        for case, slices in volumes.items():
            affine = np.diag([0.5 + 0.1 * index, 0.5 + 0.1 * index, 3.0, 1.0])
            image_vol = np.stack([s[0] for s in slices], axis=-1).astype(np.float32)
            label_vol = np.stack([s[1] for s in slices], axis=-1)
            nib.save(nib.Nifti1Image(image_vol, affine), site / "images" / f"case{case:03d}.nii.gz")
            nib.save(nib.Nifti1Image(label_vol, affine), site / "labels" / f"case{case:03d}.nii.gz")
        sites.append(site)
    return sites
