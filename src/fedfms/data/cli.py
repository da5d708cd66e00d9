"""``fedfms prepare``: one sub-command per source format, each writing one prepared client folder
(``monuseg`` and ``synthetic`` may write several). Bad source data stops the command with every
problem listed (file: problem) and nothing written."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fedfms.data.prepare import OutputSpec, PrepareReport

MAX_SIDE = 4096  # pixels of a stored image or mask side: a 100000 px mask asked for 80 GB
prepare_app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

Src = Annotated[Path, typer.Argument(help="source folder", exists=True, file_okay=False)]
Out = Annotated[Path, typer.Argument(help="folder of prepared clients (created if needed)")]
Client = Annotated[str | None, typer.Option(help="client (site) name; default: the source folder's name")]
ImageSize = Annotated[int, typer.Option(min=8, max=MAX_SIDE, help="stored image side (bilinear): store what the backbone "
                                              "takes, 1024 for SAM's ViTs (the default), 256 for LiteMedSAM")]
MaskSize = Annotated[int, typer.Option(min=8, max=MAX_SIDE, help="stored mask side (nearest): 256 for SAM's ViTs (the "
                                            "default) and for LiteMedSAM")]
Overwrite = Annotated[bool, typer.Option(help="replace an existing client (only once preparation succeeded)")]
Append = Annotated[bool, typer.Option(help="add samples to an existing client with the same classes and sizes")]
Limit = Annotated[int | None, typer.Option(min=1, help="only the first N volumes / pairs / cases (quick trials)")]
SkipUnpaired = Annotated[bool, typer.Option(help="skip images without masks (and masks without images) with a warning")]
Progress = Annotated[bool, typer.Option(help="show a progress bar (only on a terminal)")]
Tile = Annotated[int | None, typer.Option(min=8, help="cut each image into square tiles of this side before resizing (default: resize whole)")]


def _output(
    out: Path, client: str, image_size: int, mask_size: int, overwrite: bool, append: bool, progress: bool
) -> OutputSpec:
    from fedfms.data.manifest import ManifestError
    from fedfms.data.prepare import OutputSpec

    if overwrite and append:
        raise typer.BadParameter("--overwrite and --append exclude each other")
    mode = "overwrite" if overwrite else "append" if append else "create"
    try:
        return OutputSpec(out, client, image_size, mask_size, mode, progress)
    except ManifestError as err:
        raise ManifestError(f"--client: {err}") from None


def _new_clients(
    out: Path, image_size: int, mask_size: int, overwrite: bool, progress: bool
) -> Callable[[str], OutputSpec]:
    """``client name -> OutputSpec`` for converters that write new (or replaced) clients only."""
    return lambda client: _output(out, client, image_size, mask_size, overwrite, False, progress)


def _run(job: Callable[[], object]) -> None:
    """Run a preparation; print its summary, or its problems and exit 1."""
    from fedfms.data.manifest import ManifestError
    from fedfms.run.log import console_logging

    console_logging()  # e.g. the recovery from a killed preparation (fedfms.data.writer)
    from fedfms.data.validate import DataValidationError
    from fedfms.data.writer import ClientExistsError

    try:
        reports = job()
    except (DataValidationError, ClientExistsError, ManifestError, ValueError) as err:
        message = str(err)
        header = "preparation failed:" if isinstance(err, PartlyWritten) else "preparation failed, nothing written:"
        separator = "\n" if "\n" in message else " "
        typer.secho(f"{header}{separator}{message}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    for report in reports if isinstance(reports, list) else [reports]:
        typer.echo(report.summary() if hasattr(report, "summary") else str(report))


class PartlyWritten(ValueError):
    """A multi-client preparation failed after replacing clients (``--overwrite``) it cannot restore."""


def _all_or_nothing(names: list[str], prepare: Callable[[str], PrepareReport], overwrite: bool) -> list[PrepareReport]:
    """``prepare(name)`` for each client name (organs, tissues), as one preparation: when one
    fails, the clients it created before are removed again, so that "nothing written" holds
    and the same command can simply be run again. Clients replaced with ``--overwrite`` cannot
    be given back: the error names them."""
    done: list[PrepareReport] = []
    try:
        for name in names:
            done.append(prepare(name))
    except (ValueError, OSError) as err:
        if overwrite and done:
            replaced = ", ".join(str(r.client_dir) for r in done)
            raise PartlyWritten(f"{err}\n(already replaced with --overwrite before this failure: {replaced})") from None
        for report in done:
            shutil.rmtree(report.client_dir)
        raise
    return done


def _one_client_per_folder(src: Path, folders: list[Path], unit: str, client: str | None,
                           prepare: Callable[[Path, str], PrepareReport], overwrite: bool,
                           alternative: str = "") -> list[PrepareReport]:
    """``prepare(folder, client name)`` for each of ``folders`` (organs, hospitals found under
    ``src``; none found: ``src`` itself), all or nothing (:func:`_all_or_nothing`). ``--client``
    names a single folder's client only (the refusal adds ``alternative``, another way out)."""
    by_name = {folder.name: folder for folder in folders or [src]}
    if client and len(by_name) > 1:
        raise ValueError(f"{src}: holds {len(by_name)} {unit}s; --client names only a single {unit}'s folder"
                         + alternative)
    return _all_or_nothing(list(by_name), lambda name: prepare(by_name[name], client or name), overwrite)


def _classes(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


@prepare_app.command("nifti")
def nifti_command(
    src: Src,
    out: Out,
    client: Client = None,
    preset: Annotated[str, typer.Option(help="prostate (1 class, copies), fets (the paper's text: label 4, neighbours, every 5th empty) or fets-reference (the reference code's: labels 1+4, edge slices dropped, empty slices at multiples of 5)")] = "prostate",
    classes: Annotated[str | None, typer.Option(help="class names, comma separated")] = None,
    label_map: Annotated[str | None, typer.Option(help="label value -> class, e.g. '1:0,2:0,4:1' (0 = background, a+b = both)")] = None,
    channels: Annotated[str | None, typer.Option(help="copy | neighbours")] = None,
    keep_empty_every: Annotated[int | None, typer.Option(help="keep every k-th empty slice (1 = all, 0 = none)")] = None,
    axis: Annotated[int | None, typer.Option(help="slicing (depth) axis of the volume")] = None,
    clip_percentile: Annotated[float | None, typer.Option(min=0, max=100, help="upper intensity percentile to clip at")] = None,
    image_suffix: Annotated[str | None, typer.Option(help="image file stem suffix, e.g. _t1ce or _0000")] = None,
    mask_suffix: Annotated[str | None, typer.Option(help="label file stem suffix, e.g. _seg")] = None,
    skip_unpaired: SkipUnpaired = False,
    limit: Limit = None,
    image_size: ImageSize = 1024,
    mask_size: MaskSize = 256,
    overwrite: Overwrite = False,
    append: Append = False,
    progress: Progress = True,
) -> None:
    """3D NIfTI image + label volumes -> 2D slices (per-volume 99th-percentile clip, min-max)."""
    from fedfms.data.prepare.encodings import MaskEncoding, parse_levels
    from fedfms.data.prepare.nifti import prepare_nifti
    from fedfms.data.prepare.nifti import preset as nifti_preset

    def job():
        names = _classes(classes) or nifti_preset(preset).class_names
        levels = MaskEncoding("levels", parse_levels(label_map, names)) if label_map else None
        options = nifti_preset(
            preset, class_names=names, label_map=levels, channels=channels, keep_empty_every=keep_empty_every, axis=axis,
            upper_percentile=clip_percentile, image_suffix=image_suffix, mask_suffix=mask_suffix,
            skip_unpaired=skip_unpaired or None, limit=limit,
        )
        spec = _output(out, client or src.name, image_size, mask_size, overwrite, append, progress)
        return prepare_nifti(src, spec, options)

    _run(job)


def _pairs(text: str | None, flag: str) -> dict[str, str]:
    """``'A=b,C=d'`` -> ``{"A": "b", "C": "d"}``."""
    pairs = [p.partition("=") for p in (text or "").split(",") if p.strip()]
    if any(not sep or not k.strip() or not v.strip() for k, sep, v in pairs):
        raise ValueError(f"{flag} {text!r}: expected NAME=CLASS pairs separated by commas")
    return {k.strip(): v.strip() for k, _, v in pairs}


@prepare_app.command("dicom")
def dicom_command(
    src: Annotated[Path, typer.Argument(help="folder of DICOM files (any nesting and names); with --dicomweb, the folder the whole study is downloaded into, as SRC/<StudyInstanceUID>/ (it stays at the site), and prepared")],
    out: Out,
    client: Client = None,
    classes: Annotated[str | None, typer.Option(help="class names, comma separated (default: the labels of the first SEG/RTSTRUCT)")] = None,
    label_names: Annotated[str | None, typer.Option(help="segment/ROI name -> class where they differ, e.g. 'Prostate gland=prostate,PZ=prostate'")] = None,
    series: Annotated[list[str] | None, typer.Option(help="only this SeriesInstanceUID (repeat for several)")] = None,
    nifti_label: Annotated[Path | None, typer.Option(help="a NIfTI label volume for the (one chosen) series", exists=True, dir_okay=False)] = None,
    label_map: Annotated[str | None, typer.Option(help="--nifti-label: label value -> class, e.g. '1:0,2:1'")] = None,
    channels: Annotated[str, typer.Option(help="copy | neighbours")] = "copy",
    keep_empty_every: Annotated[int, typer.Option(help="keep every k-th empty slice (1 = all, 0 = none)")] = 1,
    clip_percentile: Annotated[float, typer.Option(help="upper intensity percentile to clip at")] = 99.0,
    site_secret: Annotated[Path | None, typer.Option(envvar="FEDFMS_SITE_SECRET", help="the site's secret for keyed case ids (created 0600 on first use; default ~/.config/fedfms/site-secret)")] = None,
    dicomweb: Annotated[str | None, typer.Option(help="first download the study from this DICOMweb server into SRC (credentials: README 'From PACS to PACS')")] = None,
    study: Annotated[str | None, typer.Option(help="--dicomweb: the StudyInstanceUID to download")] = None,
    limit: Limit = None,
    image_size: ImageSize = 1024,
    mask_size: MaskSize = 256,
    overwrite: Overwrite = False,
    append: Append = False,
    progress: Progress = True,
) -> None:
    """DICOM series with their SEG / RTSTRUCT (or a NIfTI label) -> 2D slices along the slice
    normal; case ids are keyed hashes, no patient identity is written."""
    from fedfms.data.prepare.dicom import DicomOptions, prepare_dicom
    from fedfms.data.prepare.encodings import MaskEncoding, parse_levels

    def job():
        if channels not in ("copy", "neighbours"):
            raise ValueError(f"--channels {channels!r}: expected copy or neighbours")
        names = _classes(classes)
        levels = MaskEncoding("levels", parse_levels(label_map, names or ["foreground"])) if label_map else None
        options = DicomOptions(
            class_names=names, label_names=_pairs(label_names, "--label-names"), series=tuple(series or ()),
            nifti_label=nifti_label, label_map=levels, channels=channels, keep_empty_every=keep_empty_every,  # type: ignore[arg-type]
            upper_percentile=clip_percentile, secret=site_secret, limit=limit,
        )
        if dicomweb:
            from fedfms.dicom.web import download_study, pacs_client

            if not study:
                raise ValueError("--dicomweb needs --study UID")
            source = download_study(pacs_client(dicomweb), study, src)
        elif not src.is_dir():
            raise ValueError(f"{src}: no such folder")
        else:
            source = src
        return prepare_dicom(source, _output(out, client or src.name, image_size, mask_size, overwrite, append, progress), options)

    _run(job)


@prepare_app.command("images")
def images_command(
    src: Src,
    out: Out,
    client: Client = None,
    preset: Annotated[str | None, typer.Option(help="palette-disc-cup | grey-disc-cup | rgb-cup0-disc128 | palette-rim-cup | grey-rim-cup | rgb-cup0-rim128 | threshold (binary, foreground above 127; name the class with --classes) | disc-threshold | inverted-binary | binary | nonzero (the default without --preset/--encoding: any non-zero value is foreground; refused for JPEG masks, whose compression noise would count)")] = None,
    classes: Annotated[str | None, typer.Option(help="class names, comma separated (e.g. disc,cup)")] = None,
    encoding: Annotated[str | None, typer.Option(help="levels | binary | threshold | nonzero")] = None,
    levels: Annotated[str | None, typer.Option(help="mask value -> classes, e.g. '0=,1=disc,2=disc+cup'")] = None,
    foreground_value: Annotated[int, typer.Option(help="binary: the foreground value (0 for inverted masks)")] = 255,
    threshold: Annotated[float, typer.Option(help="threshold: foreground above it")] = 127.0,
    invert: Annotated[bool, typer.Option(help="threshold: foreground below it")] = False,
    nested: Annotated[bool | None, typer.Option(help="each class includes the later ones (disc includes cup)")] = None,
    case_regex: Annotated[str | None, typer.Option(help="regex whose first group of the file stem is the case id")] = None,
    mask_suffix: Annotated[str, typer.Option(help="suffix of mask stems to strip when pairing, e.g. _mask")] = "",
    layout: Annotated[str, typer.Option(help="folders (images/ + masks/) | side-by-side (each mask beside its image, "
                                             "named by --mask-suffix; one folder per case)")] = "folders",
    tile: Tile = None,
    skip_unpaired: SkipUnpaired = False,
    limit: Limit = None,
    image_size: ImageSize = 1024,
    mask_size: MaskSize = 256,
    overwrite: Overwrite = False,
    append: Append = False,
    progress: Progress = True,
) -> None:
    """2D images/ + masks/ with matching names (PNG, JPEG, TIFF, NIfTI); mask encodings by option."""
    from fedfms.data.prepare.encodings import PRESETS, MaskEncoding, binary_encoding, parse_levels
    from fedfms.data.prepare.images import ImageOptions, prepare_images

    if case_regex is not None:
        try:
            re.compile(case_regex)
        except re.error as err:
            raise typer.BadParameter(f"{case_regex!r} is not a regular expression: {err}", param_hint="--case-regex")

    def job():
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"unknown mask preset {preset!r}; known: {', '.join(PRESETS)}")
        names, enc = PRESETS[preset] if preset else (["foreground"], PRESETS["nonzero"][1])
        names = _classes(classes) or names
        if encoding == "levels":
            enc = MaskEncoding("levels", parse_levels(levels or "", names))
        elif encoding == "binary":
            enc = binary_encoding(foreground_value)
        elif encoding in ("threshold", "nonzero"):
            enc = MaskEncoding(encoding, threshold=threshold, invert=invert)
        elif encoding is not None:
            raise ValueError(f"unknown encoding {encoding!r}: levels, binary, threshold or nonzero")
        if layout not in ("folders", "side-by-side"):
            raise ValueError(f"unknown layout {layout!r}: folders or side-by-side")
        options = ImageOptions(
            names, enc, layout=layout, nested=len(names) > 1 if nested is None else nested, case_regex=case_regex,
            mask_suffix=mask_suffix, skip_unpaired=skip_unpaired, tile=tile, limit=limit,
        )
        return prepare_images(src, _output(out, client or src.name, image_size, mask_size, overwrite, append, progress), options)

    _run(job)


@prepare_app.command("monuseg")
def monuseg_command(
    src: Annotated[Path, typer.Argument(help="an organ folder (one client) or the MoNuSeg root (one client per organ)", exists=True, file_okay=False)],
    out: Out,
    client: Client = None,
    tile: Tile = None,
    limit: Limit = None,
    image_size: ImageSize = 1024,
    mask_size: MaskSize = 256,
    overwrite: Overwrite = False,
    progress: Progress = True,
    one_client: Annotated[bool, typer.Option(help="a MoNuSeg root as ONE client (all organs pooled, as in the paper; default name MoNuSeg)")] = False,
) -> None:
    """MoNuSeg: one PNG per nucleus -> binary nuclei mask (union); one client per organ, or
    --one-client."""
    from fedfms.data.prepare.monuseg import organ_folders, prepare_monuseg

    spec = _new_clients(out, image_size, mask_size, overwrite, progress)

    def job():
        if one_client:
            return [prepare_monuseg(src, spec(client or "MoNuSeg"), tile, limit)]
        return _one_client_per_folder(src, organ_folders(src), "organ", client,
                                      lambda folder, name: prepare_monuseg(folder, spec(name), tile, limit), overwrite,
                                      " (or use --one-client)")

    _run(job)


@prepare_app.command("lgg")
def lgg_command(
    src: Annotated[Path, typer.Argument(help="a hospital's folder (one client) or the data set's root (one client per hospital)", exists=True, file_okay=False)],
    out: Out,
    client: Client = None,
    skip_unpaired: SkipUnpaired = False,
    limit: Limit = None,
    image_size: ImageSize = 1024,
    mask_size: MaskSize = 256,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """LGG brain MRI as published: SITE/CASE/CASE_N.tif with CASE_N_mask.tif (0/255) beside it
    -> one client per hospital (class abnormality; cases = patients)."""
    from fedfms.data.prepare.lgg import prepare_lgg, site_folders

    spec = _new_clients(out, image_size, mask_size, overwrite, progress)

    def job():
        return _one_client_per_folder(src, site_folders(src), "hospital", client,
                                      lambda folder, name: prepare_lgg(folder, spec(name), limit, skip_unpaired),
                                      overwrite)

    _run(job)


@prepare_app.command("pannuke")
def pannuke_command(
    src: Src,
    out: Out,
    tissue: Annotated[list[str] | None, typer.Option(
        help="tissue type as types.npy spells it, optionally =CLIENT (e.g. Adrenal_gland=Adrenal); repeat; default: every type")] = None,
    limit: Limit = None,
    image_size: ImageSize = 1024,
    mask_size: MaskSize = 256,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """PanNuke: the published fold arrays -> one client per tissue type (union of the nucleus channels)."""
    from fedfms.data.prepare.pannuke import prepare_pannuke, tissue_types

    spec = _new_clients(out, image_size, mask_size, overwrite, progress)

    def job():
        chosen = [t.partition("=") for t in tissue] if tissue else [(t, "", "") for t in tissue_types(src)]
        kinds = {name or kind: kind for kind, _, name in chosen}
        return _all_or_nothing(list(kinds), lambda name: prepare_pannuke(src, spec(name), kinds[name], limit), overwrite)

    _run(job)


@prepare_app.command("monusac")
def monusac_command(
    src: Src,
    out: Out,
    client: Client = None,
    tile: Tile = None,
    limit: Limit = None,
    image_size: ImageSize = 1024,
    mask_size: MaskSize = 256,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """MoNuSAC: images with XML polygon annotations (patient folders) -> one client (default name MoNuSAC)."""
    from fedfms.data.prepare.monusac import prepare_monusac

    spec = _new_clients(out, image_size, mask_size, overwrite, progress)
    _run(lambda: prepare_monusac(src, spec(client or "MoNuSAC"), tile, limit))


@prepare_app.command("synthetic")
def synthetic_command(
    out: Out,
    clients: Annotated[int, typer.Option(min=1, help="number of sites")] = 4,
    classes: Annotated[int, typer.Option(help="1 (disc) or 2 (disc + nested cup)")] = 1,
    image_size: Annotated[int, typer.Option(min=8, max=MAX_SIDE, help="stored image side")] = 64,
    mask_size: Annotated[int, typer.Option(min=8, max=MAX_SIDE, help="stored mask side")] = 16,
    samples: Annotated[int | None, typer.Option(min=1, help="samples per site (default: differs per site)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    raw: Annotated[str | None, typer.Option(help="write raw source files instead: nifti | png")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace prepared clients of the same names that are not synthetic")] = False,
) -> None:
    """A synthetic multi-center federation (sites differ in intensity, contrast, noise, blur, bias, size)."""
    from fedfms.data.synthetic import make_synthetic_federation, write_raw_federation

    def job():
        counts = [samples] * clients if samples else None
        if raw:
            if raw not in ("nifti", "png"):
                raise ValueError(f"--raw must be nifti or png, not {raw!r}")
            paths = write_raw_federation(out, raw, clients, classes, image_size, counts, seed)
        else:
            paths = make_synthetic_federation(out, clients, classes, image_size, mask_size, counts, seed, overwrite)
        return [f"{p}" for p in paths]

    _run(job)
