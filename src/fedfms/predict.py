"""``fedfms predict``: apply a trained model (a fedfms checkpoint folder, e.g. a run's
``best_model``) to new scans, and write masks beside nothing else.

Preprocessing is the one of ``fedfms prepare``, with its own functions:

* NIfTI volume ``(X, Y, Z)`` (a trailing axis of 1 is accepted): per volume, clip at the
  ``upper_percentile`` (99th) and min-max to [0, 1]; slice along ``axis``; grey -> 3 channels by
  ``copy`` or ``neighbours`` (slices k-1, k, k+1);
* 2D image (PNG, JPEG, TIFF, BMP): 8-bit / 255, other depths clipped and min-max per image;
  grey repeated to 3 channels;
* then each slice is stretched to the model's ``(S, S)`` (bilinear, antialiased) and quantised
  to 1/255 steps, exactly as a prepared client stores it and the training loader reads it.

Prediction: logits ``(N, C, M, M)`` per batch of slices -> sigmoid -> probabilities resized back
to the slice's own ``(H, W)`` by bilinear interpolation (smooth borders, no 4x blocks from the
256 px decoder output) -> ``> threshold``. A model trained on tiles (``prepare --tile T``) is
given ``tile=T``: a larger slice is then scaled so that a model input holds T of its pixels and
predicted in overlapping windows stitched by MONAI's sliding-window inference
(:func:`sliding_window_probabilities`), instead of being squeezed whole into one input.

Outputs (one per input, same file name, in the output folder; written by
:func:`fedfms.io.atomic_write`, so a failure leaves no partial file):

* NIfTI in -> NIfTI label volume of the input's shape, affine and header, uint8: class ``c``
  (0-based) is value ``c + 1`` and later classes overwrite earlier ones (nested optic disc /
  cup gives 0 / 1 / 2). ``multi_channel``: ``(X, Y, Z, C)`` of {0, 1}, overlaps kept.
* image in -> ``<stem>.png`` of the input's size: a palette PNG whose pixel values are the same
  labels (0 background, ``c + 1``) and whose palette shows them in colour. ``multi_channel``:
  ``<stem>_class<c+1>.png`` per class, 0 / 255.
* with ``overlay``, for a person checking the masks: ``overlays/<stem>.png``, the input with
  each class outlined in a bright colour (:func:`overlay_image`); for a volume, its slice with
  the most foreground, ``overlays/<stem>_slice<k>.png``.
* DICOM series (a folder) or multi-frame object in -> ``<SeriesInstanceUID>.nii.gz`` labels and
  ``<SeriesInstanceUID>.seg.dcm``, a DICOM SEG (:mod:`fedfms.dicom.predict`); slices along the
  slice normal, so ``axis`` and ``multi_channel`` do not apply (the SEG keeps overlaps).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer

from fedfms.data.prepare.intensity import clip_and_scale, image_to_unit
from fedfms.data.prepare.io import IMAGE_SUFFIXES, NIFTI_SUFFIXES, is_image_file, read_image, split_suffix
from fedfms.data.prepare.nifti import Channels, slice_channels
from fedfms.data.validate import Problems, check_finite
from fedfms.dicom.predict import is_dicom
from fedfms.errors import FedfmsError
from fedfms.io import atomic_write

if TYPE_CHECKING:
    import torch

#: Colours of labels 0..7 in the PNG palette (background black); later labels repeat them.
_COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 255)]
_PALETTE = [v for i in range(256) for v in _COLOURS[i % len(_COLOURS)]]


OVERLAY_DIR = "overlays"
#: Outline colours of classes 1, 2, ... in overlays: bright hues that stand out on tissue reds and on grey scans.
OUTLINE_COLOURS = [(0, 183, 255), (0, 255, 102), (255, 255, 0), (255, 0, 255)]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class PredictError(FedfmsError, ValueError):
    """An input that cannot be predicted (or an output that cannot be written); names the file."""


def labels_from_masks(masks: np.ndarray) -> np.ndarray:
    """``(C, ...)`` bool -> ``(...)`` uint8 labels: class c is c + 1, later classes on top."""
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)
    for c, mask in enumerate(masks):
        labels[mask] = c + 1
    return labels


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """``(H, W)`` bool -> the pixels of ``mask`` within ``width`` pixels of its border."""
    inner = mask
    for _ in range(width):
        padded = np.pad(inner, 1)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay_image(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``image (K, H, W)`` in [0, 1] (K = 1 or 3) and ``masks (C, H, W)`` bool -> ``(H, W, 3)``
    uint8: the image with the border of each class drawn in its colour (``OUTLINE_COLOURS``),
    about 1/256 of the image side thick."""
    rgb = np.repeat(image, 3 // image.shape[0], axis=0)
    out = np.round(np.moveaxis(rgb, 0, -1) * 255).astype(np.uint8)
    width = max(1, round(max(image.shape[1:]) / 256))
    for c, mask in enumerate(masks):
        out[outline(mask, width)] = OUTLINE_COLOURS[c % len(OUTLINE_COLOURS)]
    return out


def write_overlay(image: np.ndarray, masks: np.ndarray, target: Path) -> None:
    """Write :func:`overlay_image` as an RGB PNG at ``target`` (its folder made if needed)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(overlay_image(image, masks))
    atomic_write(target, lambda stream: picture.save(stream, format="PNG"))


def _raise_problems(problems: Problems) -> None:
    if problems:
        raise PredictError("; ".join(str(p) for p in problems.items))


def read_volume(path: Path) -> tuple[Any, np.ndarray]:
    """A NIfTI file -> (its nibabel image, its voxels ``(X, Y, Z)`` float32); a volume with a
    trailing axis of 1 is accepted. Raises :class:`PredictError` naming the file."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
        data = img.get_fdata(dtype=np.float32).reshape(shape) if len(shape) == 3 else None
    except Exception as err:  # noqa: BLE001 - nibabel and zlib raise many kinds for bad files
        raise PredictError(f"{path}: unreadable or truncated NIfTI file ({type(err).__name__}: {err})") from err
    if data is None:
        raise PredictError(f"{path}: wrong dimensionality: shape {tuple(img.shape)}, expected a 3D volume "
                           "(give 2D images as PNG, JPEG, TIFF or BMP)")
    problems = Problems()
    check_finite(data, path, problems)
    _raise_problems(problems)
    return img, data


def save_nifti(image: Any, target: Path) -> None:
    """A nibabel image as one file, gzip-compressed for a ``.gz`` name like ``nib.save``, atomically."""
    volume = image.to_bytes()
    atomic_write(target, lambda stream: stream.write(gzip.compress(volume) if target.suffix == ".gz" else volume))


@dataclass
class Predictor:
    """A loaded model and the prediction settings (see the module docstring)."""

    model: torch.nn.Module
    image_size: int
    num_classes: int
    device: torch.device
    dtype: torch.dtype
    threshold: float = 0.5
    channels: Channels = "copy"
    axis: int = 2
    upper_percentile: float = 99.0
    multi_channel: bool = False
    batch_size: int = 8
    progress: bool = True
    tile: int | None = None
    tile_overlap: float = 0.25
    overlay: bool = False

    def model_input(self, slices: Sequence[np.ndarray]) -> torch.Tensor:
        """``N`` slices ``(K, H, W)`` float in [0, 1] (K = 1 or 3) -> the model's input
        ``(N, 3, S, S)`` float32: each stretched to ``(S, S)`` and quantised to 1/255 steps, as a
        prepared client stores it; grey repeated to 3 channels."""
        import torch

        from fedfms.data.resize import resize_image
        from fedfms.data.writer import to_uint8

        stored = np.stack([to_uint8(resize_image(s, self.image_size)) for s in slices])  # (N, K, S, S)
        return torch.from_numpy(stored).float().div_(255.0).expand(-1, 3, -1, -1)

    def segment(self, slices: Sequence[np.ndarray]) -> np.ndarray:
        """``N`` slices ``(K, H, W)`` float in [0, 1] (K = 1 or 3, one ``(H, W)``) ->
        ``(N, C, H, W)`` bool masks at the slices' own size: the whole slice stretched to the
        model's input, or, with ``tile`` smaller than the slice, windows of ``tile`` pixels
        (:func:`sliding_window_probabilities`)."""
        import torch
        import torch.nn.functional as F

        from fedfms.data.resize import BILINEAR
        from fedfms.train.device import autocast

        def probabilities_of(images: torch.Tensor) -> torch.Tensor:  # (n, 3, S, S) -> (n, C, M, M)
            with autocast(self.device, self.dtype):
                return self.model(images).float().sigmoid()

        height, width = slices[0].shape[-2:]
        with torch.inference_mode():
            if self.tile is not None and max(height, width) > self.tile:
                unit = torch.from_numpy(np.stack(slices)).float()  # (N, K, H, W)
                probabilities = sliding_window_probabilities(
                    unit, probabilities_of, self.tile, self.image_size, self.tile_overlap, self.batch_size, self.device)
            else:
                probabilities = probabilities_of(self.model_input(slices).to(self.device))
        resized = F.interpolate(probabilities, size=(height, width), **BILINEAR)
        return (resized > self.threshold).cpu().numpy()

    def describe(self, mask_size: int, class_names: Sequence[str]) -> dict[str, Any]:
        """The rules of :meth:`segment`, :meth:`predict_image` and :meth:`predict_volume` with
        this predictor's settings, as data: what a tool running the bare model (logits
        ``(B, C, mask_size, mask_size)``, see :mod:`fedfms.export`) needs to give the same masks."""
        from fedfms.data.resize import BILINEAR

        size = self.image_size
        return {
            "model_input": {"shape": ["B", 3, size, size], "dtype": "float32", "range": [0.0, 1.0]},
            "precision": str(self.dtype).removeprefix("torch."),
            "model_output": {"shape": ["B", self.num_classes, mask_size, mask_size], "dtype": "float32",
                             "meaning": "logits, one channel per class"},
            "class_names": list(class_names),
            "image_2d": {"uint8": "value / 255", "other_depths": f"clip at percentile {self.upper_percentile} of the "
                         "image, then min-max to [0, 1]", "grey": "repeated to 3 channels"},
            "volume": {"intensity": f"clip at percentile {self.upper_percentile} of the whole volume, then min-max "
                       "to [0, 1]", "slicing_axis": self.axis, "channels": self.channels,
                       "channels_rule": "copy: the slice 3 times; neighbours: slices k-1, k, k+1 (edges repeated)"},
            "resize_to_input": {"size": [size, size], **BILINEAR, "then": "clip to [0, 1], round(x * 255) / 255"},
            "postprocess": {"activation": "sigmoid", "resize_to_slice": BILINEAR, "threshold": self.threshold,
                            "comparison": "probability > threshold",
                            "labels": "class c (0-based) is value c + 1; later classes overwrite earlier ones"},
            "tile": self.tile,
        }

    def predict_volume(self, path: Path, out_dir: Path) -> list[Path]:
        """One NIfTI volume -> its mask volume in ``out_dir`` (same name)."""
        img, data = read_volume(path)
        scaled = np.moveaxis(clip_and_scale(data, self.upper_percentile), self.axis, 0)  # (D, H, W)
        masks = self.segment_volume(scaled, path.name)  # (D, C, H, W)
        if self.overlay:
            self.overlay_volume(split_suffix(path)[0], scaled, masks, out_dir)
        masks = np.moveaxis(masks, (0, 1), (self.axis % 3 + 1, 0))  # (C, X, Y, Z)
        if self.multi_channel:
            out = np.moveaxis(masks, 0, -1).astype(np.uint8)  # (X, Y, Z, C)
        else:
            out = labels_from_masks(masks).reshape(img.shape)
        image = type(img)(out, img.affine, img.header)
        image.set_data_dtype(np.uint8)
        image.header.set_slope_inter(1, 0)
        image.header["cal_min"], image.header["cal_max"] = 0, 0  # no display window from the scan
        (target,) = self.output_paths(path, out_dir)
        save_nifti(image, target)
        return [target]

    def segment_volume(self, scaled: np.ndarray, name: str) -> np.ndarray:
        """A scaled ``(D, H, W)`` volume -> ``(D, C, H, W)`` bool masks, slice by slice in batches."""
        from tqdm import tqdm

        depth = scaled.shape[0]
        masks = np.zeros((depth, self.num_classes, *scaled.shape[1:]), dtype=bool)
        starts = range(0, depth, self.batch_size)
        for start in tqdm(starts, desc=name, unit="batch", leave=False, disable=None if self.progress else True):
            ks = range(start, min(start + self.batch_size, depth))
            masks[ks.start : ks.stop] = self.segment([slice_channels(scaled, k, self.channels) for k in ks])
        return masks

    def predict_image(self, path: Path, out_dir: Path) -> list[Path]:
        """One 2D image -> its PNG mask(s) in ``out_dir`` (see the module docstring)."""
        from PIL import Image

        problems = Problems()
        image = read_image(path, problems)
        _raise_problems(problems)
        unit = image_to_unit(image, self.upper_percentile)
        masks = self.segment([unit])[0]  # (C, H, W)
        if self.overlay:
            write_overlay(unit, masks, out_dir / OVERLAY_DIR / f"{split_suffix(path)[0]}.png")
        if self.multi_channel:
            pngs = [Image.fromarray(m.astype(np.uint8) * 255) for m in masks]
        else:
            pngs = [Image.fromarray(labels_from_masks(masks))]
            pngs[0].putpalette(_PALETTE)  # L -> P, same values
        targets = self.output_paths(path, out_dir)
        for target, png in zip(targets, pngs, strict=True):
            atomic_write(target, lambda stream, png=png: png.save(stream, format="PNG"))
        return targets

    def overlay_volume(self, stem: str, scaled: np.ndarray, masks: np.ndarray, out_dir: Path) -> None:
        """``out_dir/overlays/<stem>_slice<k>.png``: the slice ``k`` with the most foreground, its
        masks outlined. ``scaled (D, H, W)``, ``masks (D, C, H, W)``."""
        k = int(masks.reshape(len(masks), -1).sum(axis=1).argmax())
        write_overlay(scaled[k][None], masks[k], out_dir / OVERLAY_DIR / f"{stem}_slice{k}.png")

    def output_paths(self, path: Path, out_dir: Path) -> list[Path]:
        """Where the mask(s) of input ``path`` go: the same NIfTI name; ``<stem>.png`` for an
        image, or ``<stem>_class<c>.png`` (c = 1..C) with ``multi_channel``."""
        stem, suffix = split_suffix(path)
        if suffix in NIFTI_SUFFIXES:
            return [out_dir / path.name]
        if self.multi_channel:
            return [out_dir / f"{stem}_class{c + 1}.png" for c in range(self.num_classes)]
        return [out_dir / f"{stem}.png"]

    def predict_file(self, path: Path, out_dir: Path) -> list[Path]:
        """Dispatch on the suffix: NIfTI volume or 2D image."""
        if split_suffix(path)[1] in NIFTI_SUFFIXES:
            return self.predict_volume(path, out_dir)
        return self.predict_image(path, out_dir)


def sliding_window_probabilities(
    images: torch.Tensor,
    probabilities_of: Callable[[torch.Tensor], torch.Tensor],
    tile: int,
    size: int,
    overlap: float,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Probabilities of images larger than the tiles a model was trained on (``prepare --tile``).

    ``images (N, K, H, W)`` in [0, 1] (K = 1 or 3) are scaled by ``size / tile`` (bilinear,
    antialiased, quantised to 1/255 as prepared tiles are stored), so that a ``(size, size)``
    window holds ``tile`` pixels of the input, as each training tile did. MONAI's
    ``sliding_window_inference`` runs ``probabilities_of`` (``(n, 3, size, size)`` ->
    ``(n, C, m, m)``) on windows overlapping by ``overlap`` of their side and stitches them with
    Gaussian weights (window centres count most); a side shorter than a window is padded with 0.
    Returns ``(N, C, h, w)`` probabilities on the scaled grid (``h = round(H * size / tile) * m / size``).
    """
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    from fedfms.data.resize import BILINEAR

    height, width = images.shape[-2:]
    scaled_size = (max(1, round(height * size / tile)), max(1, round(width * size / tile)))
    scaled = F.interpolate(images, size=scaled_size, **BILINEAR)
    scaled = scaled.clamp_(0.0, 1.0).mul_(255.0).round_().div_(255.0).expand(-1, 3, -1, -1)
    return sliding_window_inference(scaled.to(device), roi_size=(size, size), sw_batch_size=batch_size,
                                    predictor=probabilities_of, overlap=overlap, mode="gaussian")


def find_inputs(input: Path) -> list[Path]:
    """The file itself, or every supported file directly inside a folder (sorted)."""
    if input.is_dir():
        files = sorted(p for p in input.iterdir() if is_image_file(p))
        if not files:
            raise PredictError(f"{input}: no supported files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not input.exists():
        raise PredictError(f"{input}: no such file or folder")
    if not is_image_file(input):
        raise PredictError(f"{input}: unsupported file type; expected one of {', '.join(IMAGE_SUFFIXES)}")
    return [input]


def check_outputs(files: Sequence[Path], output: Path, predictor: Predictor) -> None:
    """Refuse an output that is not a folder, two inputs with the same output file, and an
    output file that would replace an input."""
    if output.exists() and not output.is_dir():
        raise PredictError(f"{output}: the output must be a folder")
    by_target: dict[Path, list[Path]] = {}
    for path in files:
        for target in predictor.output_paths(path, output):
            by_target.setdefault(target.resolve(), []).append(path)
    clashes = [f"{', '.join(map(str, paths))} -> {target}" for target, paths in by_target.items() if len(paths) > 1]
    if clashes:
        raise PredictError("inputs would write the same output: " + "; ".join(clashes))
    replaced = sorted(str(p) for p in files if p.resolve() in by_target)
    if replaced:
        raise PredictError(f"{output}: masks would replace the inputs {', '.join(replaced)}; choose another output folder")


def load_predictor(checkpoint: Path, device: str = "auto", precision: str = "auto", **settings: Any) -> Predictor:
    """Load a fedfms checkpoint folder (``CheckpointError`` naming the file if it is missing or
    corrupt) into a :class:`Predictor` on ``device`` in eval mode; ``precision`` as in training
    (``auto``: bf16 autocast where the CPU or GPU has it, see
    :func:`fedfms.train.device.resolve_precision`; ``fp32``: the exported models' precision)."""
    from fedfms.models import CheckpointError, load_checkpoint
    from fedfms.train.device import resolve_device, resolve_precision

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint}: checkpoint folder not found (expected a fedfms checkpoint "
                              "folder with fedfms_model.json and model.safetensors, e.g. <run_dir>/best_model)")
    model, cfg = load_checkpoint(checkpoint)
    dev = resolve_device(device)
    return Predictor(model.to(dev).eval(), cfg.image_size, cfg.num_classes, dev, resolve_precision(precision, dev),
                     **settings)


def predict_path(
    checkpoint: Path,
    input: Path,
    output: Path,
    threshold: float = 0.5,
    channels: Channels = "copy",
    axis: int = 2,
    upper_percentile: float = 99.0,
    multi_channel: bool = False,
    batch_size: int = 8,
    device: str = "auto",
    progress: bool = True,
    tile: int | None = None,
    tile_overlap: float = 0.25,
    overlay: bool = False,
    series: str | None = None,
    class_names: list[str] | None = None,
    precision: str = "auto",
) -> list[Path]:
    """Predict masks for ``input`` (a file or a folder of NIfTI volumes / 2D images, or a DICOM
    series folder or multi-frame object: :func:`predict_dicom`) with the model in
    ``checkpoint`` and write them into the folder ``output``; returns the written files.

    ``tile``: the side, in the input's pixels, of the tiles the model was trained on (``fedfms
    prepare ... --tile``); larger inputs are then predicted window by window
    (:func:`sliding_window_probabilities`). ``overlay``: also write ``output/overlays/`` (see the
    module docstring). Every input is tried; if some fail, :class:`PredictError` lists each failed file and why
    (the others' masks are written).
    """
    from tqdm import tqdm

    if not 0 < threshold < 1:
        raise PredictError(f"threshold {threshold} must lie strictly between 0 and 1")
    if channels not in ("copy", "neighbours"):
        raise PredictError(f"channels {channels!r}: expected copy or neighbours")
    if not -3 <= axis < 3:
        raise PredictError(f"slicing axis {axis} does not exist in a 3D volume")
    if tile is not None and tile < 1:
        raise PredictError(f"tile {tile} must be a positive number of pixels")
    if not 0 <= tile_overlap < 1:
        raise PredictError(f"tile overlap {tile_overlap} must lie in [0, 1)")
    if precision not in PRECISIONS:
        raise PredictError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    input, output = Path(input), Path(output)
    if is_dicom(input):
        return predict_dicom(checkpoint, input, output, series, class_names, device=device, precision=precision,
                             threshold=threshold, channels=channels, upper_percentile=upper_percentile,
                             batch_size=batch_size, progress=progress, tile=tile, tile_overlap=tile_overlap,
                             overlay=overlay)
    files = find_inputs(input)
    predictor = load_predictor(
        checkpoint, device, precision, threshold=threshold, channels=channels, axis=axis, upper_percentile=upper_percentile,
        multi_channel=multi_channel, batch_size=batch_size, progress=progress, tile=tile, tile_overlap=tile_overlap,
        overlay=overlay,
    )
    check_outputs(files, output, predictor)
    output.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failures: list[str] = []
    for path in tqdm(files, desc="predict", unit="file", disable=None if progress else True):
        try:
            written += predictor.predict_file(path, output)
        except PredictError as err:
            failures.append(str(err))
    if failures:
        raise PredictError(f"{len(failures)} of {len(files)} input(s) failed ({len(written)} mask file(s) written):\n"
                           + "\n".join(f"  - {f}" for f in failures))
    return written


def model_class_names(checkpoint: Path, num_classes: int, names: list[str] | None) -> list[str]:
    """``names`` (one per class), else the checkpoint's ``class_names`` metadata, else ``class 1``..."""
    from fedfms.models.checkpoint import read_checkpoint_config

    stored = read_checkpoint_config(checkpoint)[1].get("class_names")
    names = names or (stored.split(",") if stored else [f"class {c + 1}" for c in range(num_classes)])
    if len(names) != num_classes:
        raise PredictError(f"{len(names)} class names ({', '.join(names)}) for a model of {num_classes} classes")
    return names


def predict_dicom(
    checkpoint: Path, input: Path, output: Path, series: str | None = None, class_names: list[str] | None = None,
    device: str = "auto", **settings: Any,
) -> list[Path]:
    """A DICOM series (folder) or multi-frame object -> ``<SeriesInstanceUID>.nii.gz`` and
    ``<SeriesInstanceUID>.seg.dcm`` in ``output`` (see :mod:`fedfms.dicom.predict`); ``series``
    chooses one of several series."""
    from fedfms.dicom.predict import checkpoint_digest, choose_series, predict_series

    chosen = choose_series(input, series)
    predictor = load_predictor(checkpoint, device, **settings)
    names = model_class_names(checkpoint, predictor.num_classes, class_names)
    return predict_series(predictor, chosen, output, names, checkpoint_digest(checkpoint))


def predict_command(
    checkpoint: Annotated[Path, typer.Option(help="fedfms checkpoint folder, e.g. runs/NAME/best_model.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the masks (same file names).")],
    input: Annotated[Path | None, typer.Option("--input", "-i", help="A NIfTI volume or 2D image, or a folder of them; a DICOM series folder or multi-frame file.")] = None,
    threshold: Annotated[float, typer.Option(help="Foreground where sigmoid probability > threshold.")] = 0.5,
    channels: Annotated[str, typer.Option(help="Volumes: grey -> 3 channels by copy | neighbours (as prepared).")] = "copy",
    axis: Annotated[int, typer.Option(help="Volumes: slicing (depth) axis, as prepared.")] = 2,
    clip_percentile: Annotated[float, typer.Option(min=0, max=100, help="Upper intensity percentile to clip at, as prepared.")] = 99.0,
    multi_channel: Annotated[bool, typer.Option(help="One {0,1} channel per class (4D NIfTI, one PNG per class) instead of labels.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Slices per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast where the CPU/GPU has it) | fp32 (as the "
                                           "exported models) | bf16 | fp16.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    tile: Annotated[int | None, typer.Option(help="Side in input pixels of the tiles the model was trained on "
                                             "(prepare's --tile): larger inputs are predicted window by window.")] = None,
    tile_overlap: Annotated[float, typer.Option(help="With --tile: overlap of neighbouring windows, fraction of a side.")] = 0.25,
    overlay: Annotated[bool, typer.Option(help="Also write OUTPUT/overlays/: each input with the predicted classes outlined.")] = False,
    series: Annotated[str | None, typer.Option(help="DICOM: the SeriesInstanceUID to segment when the input or study holds several.")] = None,
    class_names: Annotated[str | None, typer.Option(help="DICOM SEG: segment labels, comma separated (default: the checkpoint's class names).")] = None,
    dicomweb: Annotated[str | None, typer.Option(help="Segment a series of this DICOMweb server (with --study) and store the SEG back; "
                                                 "credentials from the environment (README 'From PACS to PACS').")] = None,
    study: Annotated[str | None, typer.Option(help="--dicomweb: the StudyInstanceUID.")] = None,
) -> None:
    """Segment new scans with a trained global model: NIfTI in -> NIfTI label volume out (same
    shape and affine), PNG/JPEG/TIFF/BMP in -> PNG label mask out (same size)."""
    from fedfms.train.device import resolve_device

    resolve_device(device)  # a device this machine lacks is refused before the model is read
    names = [c.strip() for c in class_names.split(",")] if class_names else None
    settings: dict[str, Any] = dict(threshold=threshold, channels=channels, upper_percentile=clip_percentile,
                                    batch_size=batch_size, device=device, progress=progress, tile=tile, tile_overlap=tile_overlap)
    if dicomweb:
        from fedfms.dicom.web import predict_from_pacs

        if not study:
            raise PredictError("--dicomweb needs --study UID")
        written = predict_from_pacs(dicomweb, study, series, checkpoint, output, names, precision=precision,
                                    overlay=overlay, **settings)
    elif input is None:
        raise PredictError("give --input (a file or folder) or --dicomweb URL --study UID")
    else:
        written = predict_path(checkpoint, input, output, axis=axis, multi_channel=multi_channel,
                               series=series, class_names=names, overlay=overlay, precision=precision, **settings)
    typer.echo(f"{len(written)} mask file(s) written to {output}"
               + (f"; overlays in {output / OVERLAY_DIR}" if overlay else ""))
