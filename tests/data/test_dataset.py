"""ClientDataset items: shapes, dtypes, ranges, resize on load, and loader use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fedfms.data import ClientDataset, make_synthetic_federation


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    return make_synthetic_federation(tmp_path_factory.mktemp("fed"), 1, 2, 64, 16, [8], seed=0)[0]


def test_item_shapes_dtypes_ranges(client):
    ds = ClientDataset(client)
    item = ds[0]
    assert len(ds) == 8 and item["id"] == ds.manifest.samples[0].id
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (2, 16, 16) and item["mask"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    stored = np.load(client / "images" / f"{item['id']}.npy")
    assert torch.allclose(item["image"], torch.from_numpy(stored).float() / 255)


def test_resize_on_load_and_indices(client):
    ds = ClientDataset(client, indices=[3, 5], image_size=32, mask_size=8)
    item = ds[1]
    assert len(ds) == 2 and item["id"] == ds.manifest.samples[5].id
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (2, 8, 8)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"][0].sum() > 0
    with pytest.raises(IndexError, match="outside"):
        ClientDataset(client, indices=[99])


def test_grey_is_repeated_to_three_channels(tmp_path, client):
    grey_dir = tmp_path / "grey"
    import shutil

    shutil.copytree(client, grey_dir)
    for path in (grey_dir / "images").glob("*.npy"):
        np.save(path, np.load(path)[:1])
    image = ClientDataset(grey_dir)[0]["image"]
    assert image.shape == (3, 64, 64) and torch.equal(image[0], image[2])


def test_dataloader_batches(client):
    batch = next(iter(DataLoader(ClientDataset(client), batch_size=6, shuffle=True)))
    assert batch["image"].shape == (6, 3, 64, 64) and batch["mask"].shape == (6, 2, 16, 16) and len(batch["id"]) == 6


def test_a_sample_that_cannot_be_read_names_its_file(tmp_path):
    from fedfms.data.dataset import SampleError, read_array, read_tensor

    text, garbage, small = tmp_path / "text.npy", tmp_path / "garbage.npy", tmp_path / "small.npy"
    np.save(text, np.full((1, 4, 4), "x"))
    garbage.write_bytes(b"not an array")
    np.save(small, np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(SampleError, match=f"{text}: sample array of type <U1"):
        read_tensor(text)
    with pytest.raises(SampleError, match=f"{garbage}: unreadable sample array"):
        read_array(garbage)
    with pytest.raises(SampleError, match=rf"{small}: array of shape \(1, 2, 2\), expected \(-1, 4, 4\)"):
        read_array(small, (-1, 4, 4))
