"""The synthetic multi-center federation: deterministic, different sites, prepared and raw forms."""

from __future__ import annotations

import numpy as np

from fedfms.data import find_clients, make_synthetic_federation, read_manifest, write_raw_federation
from fedfms.data.prepare import MASK_PRESETS, ImageOptions, OutputSpec, prepare_images, prepare_nifti
from fedfms.data.prepare.encodings import label_map_encoding
from fedfms.data.prepare.nifti import NiftiOptions


def arrays(client, kind):
    return np.stack([np.load(p) for p in sorted((client / kind).glob("*.npy"))])


def test_deterministic_and_seeded(tmp_path):
    first = make_synthetic_federation(tmp_path / "a", 4, 2, 64, 16, [20] * 4, seed=5)
    second = make_synthetic_federation(tmp_path / "b", 4, 2, 64, 16, [20] * 4, seed=5)
    other = make_synthetic_federation(tmp_path / "c", 4, 2, 64, 16, [20] * 4, seed=6)
    assert [p.name for p in first] == ["site-A", "site-B", "site-C", "site-D"] == [p.name for p in find_clients(tmp_path / "a")]
    for kind in ("images", "masks"):
        assert np.array_equal(arrays(first[0], kind), arrays(second[0], kind))
    assert not np.array_equal(arrays(first[0], "images"), arrays(other[0], "images"))
    manifest = read_manifest(first[1])
    assert manifest.class_names == ["disc", "cup"] and len(manifest.samples) == 20 and len(manifest.case_ids) == 5
    masks = arrays(first[1], "masks")
    assert masks.shape == (20, 2, 16, 16) and (masks[:, 0] >= masks[:, 1]).all() and masks[:, 1].sum() > 0


def test_sites_differ(tmp_path):
    clients = make_synthetic_federation(tmp_path, 4, 1, 64, 16, seed=0)
    counts = [len(read_manifest(c).samples) for c in clients]
    assert len(set(counts)) > 1  # default sample counts differ per site
    stats = [(arrays(c, "images").mean(), arrays(c, "images").std(), arrays(c, "masks").mean()) for c in clients]
    means, stds, sizes = zip(*stats)
    assert max(means) - min(means) > 10 and max(stds) - min(stds) > 5  # intensity and contrast, in uint8 units
    assert max(sizes) / min(sizes) > 1.3  # object size distribution


def test_raw_png_roundtrip_through_converter(tmp_path):
    (site, *_) = write_raw_federation(tmp_path / "raw", "png", 2, 2, 32, [6, 5], seed=1)
    report = prepare_images(site, OutputSpec(tmp_path / "prep", site.name, 32, 8, progress=False),
                            ImageOptions(*MASK_PRESETS["grey-disc-cup"], case_regex=r"^(case\d+)_"))
    assert report.samples == 6 and report.cases == 2 and report.foreground_fraction[0] > report.foreground_fraction[1] > 0


def test_raw_nifti_roundtrip_through_converter(tmp_path):
    sites = write_raw_federation(tmp_path / "raw", "nifti", 2, 1, 32, [8, 8], seed=1)
    for site in sites:
        report = prepare_nifti(site, OutputSpec(tmp_path / "prep", site.name, 32, 8, progress=False),
                               NiftiOptions(["disc"], label_map_encoding(1)))
        assert report.samples == 8 and report.cases == 2
