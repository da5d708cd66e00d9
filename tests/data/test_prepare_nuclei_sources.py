"""Nuclei sources of the paper beside MoNuSeg, on tiny files written in their published formats:
PanNuke's fold arrays (one client per tissue type) and MoNuSAC's XML polygons; MoNuSeg as one
client."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import monuseg_root, out_spec, write_monusac_image, write_pannuke_fold
from PIL import Image
from typer.testing import CliRunner

from fedfms.data import read_manifest
from fedfms.data.cli import prepare_app
from fedfms.data.prepare import prepare_monusac, prepare_monuseg, prepare_pannuke, tissue_types
from fedfms.data.validate import DataValidationError


def _load_masks(client: Path) -> np.ndarray:
    return np.stack([np.load(p) for p in sorted((client / "masks").glob("*.npy"))])


def test_pannuke_one_client_per_tissue_with_the_union_of_nucleus_channels(tmp_path):
    src = tmp_path / "pannuke"
    write_pannuke_fold(src, 1, ["Adrenal_gland", "Uterus", "Adrenal_gland"])
    write_pannuke_fold(src, 2, ["Uterus", "Adrenal_gland"])
    assert tissue_types(src) == ["Adrenal_gland", "Uterus"]
    report = prepare_pannuke(src, out_spec(tmp_path, "Adrenal", 16, 16), "Adrenal_gland")
    manifest = read_manifest(tmp_path / "prepared" / "Adrenal")
    assert report.samples == 3 and len(manifest.case_ids) == 3  # folds 1 (x2) and 2, each image a case
    assert manifest.samples[0].source == "Fold 1/images/fold1/images.npy[0]"
    masks = _load_masks(tmp_path / "prepared" / "Adrenal")
    assert masks.shape == (3, 1, 16, 16) and (masks.sum(axis=(1, 2, 3)) == 9 + 8).all()  # both nuclei, no background


def test_pannuke_unknown_tissue_and_mismatched_arrays_are_named(tmp_path):
    src = tmp_path / "pannuke"
    write_pannuke_fold(src, 1, ["Uterus", "Colon"])
    with pytest.raises(DataValidationError, match="no image of tissue type 'Liver'; found: Colon, Uterus"):
        prepare_pannuke(src, out_spec(tmp_path, "Liver", 16, 16), "Liver")
    np.save(src / "Fold 1" / "images" / "fold1" / "types.npy", np.array(["Uterus"]))
    with pytest.raises(DataValidationError, match="types.npy: 1 tissue types for 2 images"):
        prepare_pannuke(src, out_spec(tmp_path, "Uterus", 16, 16), "Uterus")
    assert not (tmp_path / "prepared" / "Uterus").exists()


def test_monusac_polygons_filled_and_patients_as_cases(tmp_path):
    src = tmp_path / "MoNuSAC"
    square = [(2, 2), (6, 2), (6, 6), (2, 6)]  # a 5x5 filled square, edges included
    write_monusac_image(src / "TCGA-55-1594", "TCGA-55-1594_1", [square])
    write_monusac_image(src / "TCGA-55-1594", "TCGA-55-1594_2", [square, [(10, 10), (14, 10), (14, 14), (10, 14)]])
    write_monusac_image(src / "TCGA-A2-A04X", "TCGA-A2-A04X_1", [square])
    report = prepare_monusac(src, out_spec(tmp_path, "MoNuSAC", 20, 20))
    manifest = read_manifest(tmp_path / "prepared" / "MoNuSAC")
    assert report.samples == 3 and sorted(manifest.case_ids) == ["TCGA-55-1594", "TCGA-A2-A04X"]
    masks = _load_masks(tmp_path / "prepared" / "MoNuSAC")
    assert sorted(masks.sum(axis=(1, 2, 3)).tolist()) == [25, 25, 50]


def test_monusac_unpaired_and_broken_annotations_are_named(tmp_path):
    src = tmp_path / "MoNuSAC"
    write_monusac_image(src / "P1", "P1_1", [[(2, 2), (6, 2), (6, 6)]])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / "P1" / "P1_2.tif")
    with pytest.raises(DataValidationError, match="P1_2.tif: image has no mask"):
        prepare_monusac(src, out_spec(tmp_path, "a", 20, 20))
    (src / "P1" / "P1_2.xml").write_text("<Annotations><Region><Vertex X='a' Y='1'/>")
    with pytest.raises(DataValidationError, match="P1_2.xml: cannot read the XML"):
        prepare_monusac(src, out_spec(tmp_path, "b", 20, 20))


def test_pannuke_negative_or_nan_instance_ids_are_refused_not_read_as_background(tmp_path):
    src = tmp_path / "pannuke"
    write_pannuke_fold(src, 1, ["Uterus", "Uterus"])
    masks_file = src / "Fold 1" / "masks" / "fold1" / "masks.npy"
    for bad in (-3.0, np.nan):
        masks = np.load(masks_file)
        masks[1, 0, 0, 2] = bad
        np.save(masks_file, masks)
        with pytest.raises(DataValidationError, match=r"masks.npy: image 1: nucleus instance ids must be finite and >= 0"):
            prepare_pannuke(src, out_spec(tmp_path, "Uterus", 16, 16), "Uterus")
        assert not (tmp_path / "prepared" / "Uterus").exists()


@pytest.mark.parametrize("vertex", [(-50, 3), (1e300, 4), ("nan", 5), (4, "inf")])
def test_monusac_vertices_far_outside_the_image_or_not_numbers_are_refused(vertex, tmp_path):
    src = tmp_path / "MoNuSAC"
    write_monusac_image(src / "P1", "P1_1", [[(2, 2), (6, 2), (6, 6)], [(3, 3), vertex, (8, 8)]])
    with pytest.raises(DataValidationError, match=r"P1_1.xml: polygon 2: vertex \(.*\) is not a point of the 20 x 20 image"):
        prepare_monusac(src, out_spec(tmp_path, "MoNuSAC", 20, 20))
    assert not (tmp_path / "prepared" / "MoNuSAC").exists()


def test_monusac_vertices_on_the_border_are_kept(tmp_path):
    src = tmp_path / "MoNuSAC"
    write_monusac_image(src / "P1", "P1_1", [[(-1, -1), (20, -1), (21, 21), (0, 20)]])  # the whole tile
    prepare_monusac(src, out_spec(tmp_path, "MoNuSAC", 20, 20))
    assert _load_masks(tmp_path / "prepared" / "MoNuSAC").all()


def test_monuseg_root_as_one_client(tmp_path):
    root = monuseg_root(tmp_path / "MoNuSeg")
    report = prepare_monuseg(root, out_spec(tmp_path, "MoNuSeg", 12, 12))
    manifest = read_manifest(tmp_path / "prepared" / "MoNuSeg")
    assert report.samples == 2 and sorted(manifest.case_ids) == ["TCGA-18-5592", "TCGA-A7-A13E"]
    assert {s.source.split("/")[0] for s in manifest.samples} == {"breast", "liver"}


def test_client_names_one_organ_only_and_nothing_is_written(tmp_path):
    root = monuseg_root(tmp_path / "MoNuSeg")
    result = CliRunner().invoke(prepare_app, ["monuseg", str(root), str(tmp_path / "out"), "--client", "x",
                                              "--image-size", "12", "--mask-size", "12", "--no-progress"])
    assert result.exit_code == 1 and "holds 2 organs; --client names only a single organ's folder (or use " \
        "--one-client)" in result.output
    assert not (tmp_path / "out").exists()
