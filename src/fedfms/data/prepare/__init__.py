"""Converters from the files hospitals have to prepared client folders, one module per source format:
:mod:`~fedfms.data.prepare.nifti` (3D volumes), :mod:`~fedfms.data.prepare.images` (generic 2D
images/ + masks/, fundus and prostate-slice mask encodings), and the nuclei sets:
:mod:`~fedfms.data.prepare.monuseg` (one PNG per nucleus), :mod:`~fedfms.data.prepare.pannuke`
(the published fold arrays, one client per tissue type), :mod:`~fedfms.data.prepare.monusac`
(XML polygon annotations); brain MRI: :mod:`~fedfms.data.prepare.lgg` (the LGG set's
patient folders, each slice's mask beside it)."""

from fedfms.data.prepare.common import OutputSpec, PrepareReport
from fedfms.data.prepare.encodings import PRESETS as MASK_PRESETS
from fedfms.data.prepare.encodings import MaskEncoding, binary_encoding, label_map_encoding, parse_levels
from fedfms.data.prepare.images import ImageOptions, prepare_images
from fedfms.data.prepare.lgg import prepare_lgg
from fedfms.data.prepare.monusac import prepare_monusac
from fedfms.data.prepare.monuseg import prepare_monuseg
from fedfms.data.prepare.nifti import NiftiOptions, prepare_nifti
from fedfms.data.prepare.pannuke import prepare_pannuke, tissue_types

__all__ = [
    "MASK_PRESETS",
    "ImageOptions",
    "MaskEncoding",
    "NiftiOptions",
    "OutputSpec",
    "PrepareReport",
    "binary_encoding",
    "label_map_encoding",
    "parse_levels",
    "prepare_images",
    "prepare_lgg",
    "prepare_monusac",
    "prepare_monuseg",
    "prepare_nifti",
    "prepare_pannuke",
    "tissue_types",
]
