"""MoNuSAC converter: H&E images with XML polygon annotations -> one client (class ``nuclei``).

Layout (as published, ``MoNuSAC_images_and_annotations``)::

    SRC/PATIENT/PATIENT_N.tif     # RGB(A) image (the .svs beside it is not read)
    SRC/PATIENT/PATIENT_N.xml     # <Annotations><Annotation> per cell type (Epithelial, Lymphocyte,
                                  #   Neutrophil, Macrophage) <Regions><Region><Vertices><Vertex X= Y=/>

Every region of every cell type is filled (Pillow's polygon rasteriser); the nuclei mask is their
union. The patient folder is the case, so a patient's images never straddle train and
validation.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fedfms.data.manifest import SampleRecord, safe_id
from fedfms.data.prepare.common import OutputSpec, PrepareReport, RawSample, tiled, write_samples
from fedfms.data.prepare.intensity import image_to_unit
from fedfms.data.prepare.io import read_image
from fedfms.data.validate import Problems, check_not_empty, check_unpaired

CLASS_NAMES = ["nuclei"]
#: How far past the image border (pixels) a polygon vertex may lie.
VERTEX_MARGIN = 2.0
IMAGE_SUFFIXES = (".tif", ".tiff")


def find_pairs(src: Path, problems: Problems) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs in the patient folders; unpaired files are problems."""
    images = {p.with_suffix(""): p for p in sorted(Path(src).glob("*/*")) if p.suffix.lower() in IMAGE_SUFFIXES}
    annotations = {p.with_suffix(""): p for p in sorted(Path(src).glob("*/*.xml"))}
    check_unpaired(sorted(str(images[k]) for k in images.keys() - annotations.keys()),
                   sorted(str(annotations[k]) for k in annotations.keys() - images.keys()), problems)
    pairs = [(images[k], annotations[k]) for k in sorted(images.keys() & annotations.keys())]
    check_not_empty(len(pairs), src, problems, "image/annotation pairs (PATIENT/NAME.tif + PATIENT/NAME.xml)")
    return pairs


def read_polygons(path: Path, problems: Problems) -> list[list[tuple[float, float]]] | None:
    """Every region's vertices ``[(x, y), ...]`` in an annotation file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as err:
        problems.add(path, f"cannot read the XML annotation: {err}")
        return None
    polygons = []
    for region in root.iter("Region"):
        try:
            vertices = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
        except (KeyError, ValueError) as err:
            problems.add(path, f"region {region.attrib.get('Id', '?')}: bad vertex ({err})")
            return None
        if len(vertices) >= 3:
            polygons.append(vertices)
    return polygons


def check_vertices(polygons: list[list[tuple[float, float]]], height: int, width: int, path: Path,
                   problems: Problems) -> bool:
    """Every vertex finite and inside the ``height`` x ``width`` image, give or take
    ``VERTEX_MARGIN`` pixels (annotation tools place edge vertices on or just past the border);
    a vertex far outside or not a number names the annotation file and is an error, never clipped."""
    for number, polygon in enumerate(polygons, start=1):
        for x, y in polygon:
            inside = -VERTEX_MARGIN <= x <= width + VERTEX_MARGIN and -VERTEX_MARGIN <= y <= height + VERTEX_MARGIN
            if not (np.isfinite(x) and np.isfinite(y) and inside):
                problems.add(path, f"polygon {number}: vertex ({x:g}, {y:g}) is not a point of the {width} x {height} image")
                return False
    return True


def rasterise(polygons: list[list[tuple[float, float]]], height: int, width: int) -> np.ndarray:
    """``(height, width)`` bool: the union of the filled polygons."""
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon(polygon, fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def prepare_monusac(src: Path, out: OutputSpec, tile: int | None = None, limit: int | None = None) -> PrepareReport:
    """Prepare a MoNuSAC folder as one client; ``tile``: cut images into squares of this side
    first; ``limit``: only the first N images (quick trials, tests)."""
    src = Path(src)
    problems = Problems(source=src)
    pairs = find_pairs(src, problems)
    problems.raise_if_any()
    pairs = pairs[:limit] if limit else pairs

    def convert(pair: tuple[Path, Path], problems: Problems, report: PrepareReport) -> Iterator[RawSample]:
        image_path, annotation = pair
        image = read_image(image_path, problems)
        polygons = read_polygons(annotation, problems)
        if image is None or polygons is None or not check_vertices(polygons, *image.shape[:2], annotation, problems):
            return
        nuclei = rasterise(polygons, *image.shape[:2])
        if not nuclei.any():
            problems.add(annotation, "no nucleus region (an unannotated image would train as all background)")
            return
        record = SampleRecord(id=safe_id(image_path.stem), case_id=image_path.parent.name,
                              source=image_path.relative_to(src).as_posix(), mask_source=annotation.relative_to(src).as_posix())
        yield from tiled(RawSample(image_to_unit(image), nuclei[None], record), tile)

    settings = {"converter": "monusac", "source": str(src), "mask": "union of the annotated regions of every cell type",
                "image_scaling": "uint8 / 255", "tile": tile}
    return write_samples(pairs, convert, out, CLASS_NAMES, settings, problems)
