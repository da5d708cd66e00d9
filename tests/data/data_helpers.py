"""Small real source files for the converter tests: NIfTI via nibabel, PNG via Pillow."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from fedfms.data.prepare import OutputSpec


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def save_png(path: Path, array: np.ndarray, **options) -> Path:
    """Save with Pillow; the format follows the suffix (PNG, JPEG with ``quality=``...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def volume_pair(root: Path, case: str, depth: int = 6, size: int = 24, labels_value: int = 1, affine=None) -> tuple[Path, Path]:
    """A grey volume (size, size, depth) in scanner units with a cube labelled ``labels_value``
    in the middle slices (first and last slice empty)."""
    rng = np.random.default_rng(zlib.crc32(case.encode()))  # the same volume in every process
    image = rng.uniform(0, 500, size=(size, size, depth)).astype(np.float32)
    labels = np.zeros((size, size, depth), dtype=np.uint8)
    labels[6:18, 6:18, 1 : depth - 1] = labels_value
    image[labels > 0] += 1000
    return (
        save_nifti(root / "images" / f"{case}.nii.gz", image, affine),
        save_nifti(root / "labels" / f"{case}.nii.gz", labels, affine),
    )


def out_spec(tmp_path: Path, client: str = "site", image_size: int = 32, mask_size: int = 8, mode: str = "create") -> OutputSpec:
    return OutputSpec(tmp_path / "prepared", client, image_size, mask_size, mode, progress=False)


def monuseg_root(root: Path) -> Path:
    """A MoNuSeg tree as published (``ORGAN/CASE/images/CASE.png``, one mask PNG per nucleus) of
    two organs with one 12 px case each; returns ``root``."""
    for organ, case in (("breast", "TCGA-A7-A13E"), ("liver", "TCGA-18-5592")):
        save_png(root / organ / case / "images" / f"{case}.png", np.full((12, 12, 3), 120, np.uint8))
        nucleus = np.zeros((12, 12), np.uint8)
        nucleus[3:6, 3:6] = 255
        save_png(root / organ / case / "masks" / "mask_0001.png", nucleus)
    return root


def write_pannuke_fold(root: Path, fold: int, types: list[str], size: int = 16) -> None:
    """``Fold N/images/foldN/{images,types}.npy`` and ``Fold N/masks/foldN/masks.npy``."""
    n = len(types)
    images = np.random.default_rng(fold).uniform(0, 255, (n, size, size, 3))  # float64, as published
    masks = np.zeros((n, size, size, 6))
    masks[:, 2:5, 2:5, 0] = 7  # a neoplastic nucleus (instance id 7)
    masks[:, 10:12, 10:14, 4] = 3  # an epithelial one
    masks[..., 5] = 1  # the background channel: not a nucleus
    base = root / f"Fold {fold}"
    (base / "images" / f"fold{fold}").mkdir(parents=True)
    (base / "masks" / f"fold{fold}").mkdir(parents=True)
    np.save(base / "images" / f"fold{fold}" / "images.npy", images)
    np.save(base / "images" / f"fold{fold}" / "types.npy", np.array(types))
    np.save(base / "masks" / f"fold{fold}" / "masks.npy", masks)


def write_monusac_image(folder: Path, name: str, regions: list[list[tuple[int, int]]], size: int = 20) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 180, np.uint8)).save(folder / f"{name}.tif")
    annotations = "".join(
        f'<Annotation Id="{i}"><Attributes><Attribute Name="Lymphocyte"/></Attributes><Regions>'
        f'<Region Id="{i}"><Vertices>' + "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in region)
        + "</Vertices></Region></Regions></Annotation>" for i, region in enumerate(regions, start=1))
    (folder / f"{name}.xml").write_text(f"<Annotations>{annotations}</Annotations>")
