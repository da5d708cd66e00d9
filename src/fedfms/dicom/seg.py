"""Predicted masks as a DICOM SEG (highdicom) that a PACS stores and a viewer overlays on the
scan: binary, one segment per class (labelled with the model's class names), referencing every
source image (or frame) of the series and its frame of reference, in the source's study as a
new series. Algorithm identification: ``fedfms``, its version and the checkpoint's digest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedfms.dicom.series import Series
from fedfms.io import atomic_write

if TYPE_CHECKING:
    from highdicom.seg import Segmentation

#: A predicted region whose anatomy fedfms does not know: SCT "Tissue" / "Organ".
_CATEGORY = ("85756007", "SCT", "Tissue")
_TYPE = ("113343008", "SCT", "Organ")
SERIES_NUMBER = 9901


def segmentation(series: Series, masks: np.ndarray, class_names: list[str], version: str, digest: str) -> Segmentation:
    """``masks (C, D, R, C')`` bool on the series' sorted planes -> a ``highdicom.seg.Segmentation``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    algorithm = hd.AlgorithmIdentificationSequence(
        name="fedfms", family=codes.cid7162.ArtificialIntelligence,
        version=version, parameters={"checkpoint_sha256": digest},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=c + 1, segment_label=name, segmented_property_category=Code(*_CATEGORY),
            segmented_property_type=Code(*_TYPE), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for c, name in enumerate(class_names)
    ]
    pixels = np.moveaxis(masks, 0, -1).astype(np.uint8)  # (D, R, C', C)
    if series.multi_frame:
        sources = [series.first]
        order = np.argsort([p.frame for p in series.planes])  # back to the object's frame order
        pixels = pixels[order]
    else:
        sources = [series.objects[p.path] for p in series.planes]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="fedfms", manufacturer_model_name="fedfms predict",
        software_versions=version, device_serial_number=digest[:16], series_description="fedfms segmentation",
        content_label="FEDFMS", content_description=f"fedfms {version}, checkpoint sha256 {digest[:16]}",
        omit_empty_frames=False,
    )


def write_seg(target: Path, series: Series, masks: np.ndarray, class_names: list[str], version: str, digest: str) -> Path:
    """Write the SEG of ``masks`` to ``target`` atomically; returns ``target``."""
    seg = segmentation(series, masks, class_names, version, digest)
    atomic_write(target, lambda stream: seg.save_as(stream, enforce_file_format=True))
    return target
