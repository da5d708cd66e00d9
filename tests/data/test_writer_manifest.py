"""Prepared client folders: manifest round trip, clear errors, atomic create/overwrite/append."""

from __future__ import annotations

import numpy as np
import pytest

from fedfms.data import ClientExistsError, ClientWriter, ManifestError, SampleRecord, find_clients, read_manifest

IMAGE = np.full((3, 8, 8), 0.5, np.float32)
MASK = np.zeros((1, 4, 4), bool)


def write(root, ids, mode="create", fail=False):
    with ClientWriter(root, "site", ["organ"], 8, 4, {"converter": "test"}, mode) as writer:
        for i in ids:
            writer.add(IMAGE, MASK, SampleRecord(id=i, case_id=i[:2], source=f"{i}.png"))
        if fail:
            raise RuntimeError("boom")


def test_round_trip_and_uint8_storage(tmp_path):
    write(tmp_path, ["c1_a", "c1_b", "c2_a"])
    manifest = read_manifest(tmp_path / "site")
    assert manifest.num_classes == 1 and manifest.case_ids == ["c1", "c2"] and manifest.preprocessing["converter"] == "test"
    image = np.load(tmp_path / "site/images/c1_a.npy")
    assert image.dtype == np.uint8 and image.shape == (3, 8, 8) and image[0, 0, 0] == 128  # round(0.5 * 255)
    assert find_clients(tmp_path) == [tmp_path / "site"]


def test_failure_leaves_nothing_and_create_refuses_existing(tmp_path):
    with pytest.raises(RuntimeError):
        write(tmp_path, ["c1_a"], fail=True)
    assert list(tmp_path.iterdir()) == []
    write(tmp_path, ["c1_a"])
    with pytest.raises(ClientExistsError, match="exists"):
        write(tmp_path, ["c9_a"])
    with pytest.raises(RuntimeError):
        write(tmp_path, ["c9_a"], mode="overwrite", fail=True)
    assert [s.id for s in read_manifest(tmp_path / "site").samples] == ["c1_a"]
    write(tmp_path, ["c9_a"], mode="overwrite")
    assert [s.id for s in read_manifest(tmp_path / "site").samples] == ["c9_a"]
    assert [p.name for p in tmp_path.iterdir()] == ["site"]


def test_append_is_atomic(tmp_path):
    write(tmp_path, ["c1_a"])
    write(tmp_path, ["c2_a"], mode="append")
    assert [s.id for s in read_manifest(tmp_path / "site").samples] == ["c1_a", "c2_a"]
    with pytest.raises(RuntimeError):
        write(tmp_path, ["c3_a"], mode="append", fail=True)
    assert len(read_manifest(tmp_path / "site").samples) == 2 and not (tmp_path / "site/images/c3_a.npy").exists()
    with pytest.raises(ValueError, match="already used"):
        write(tmp_path, ["c1_a"], mode="append")
    with pytest.raises(ValueError, match="class_names"):
        with ClientWriter(tmp_path, "site", ["disc", "cup"], 8, 4, {}, "append"):
            pass


def test_shape_checks_on_add(tmp_path):
    with pytest.raises(ValueError, match="mask of shape"):
        with ClientWriter(tmp_path, "site", ["organ"], 8, 4, {}) as writer:
            writer.add(IMAGE, np.zeros((2, 4, 4)), SampleRecord(id="x", case_id="x", source="x"))
    assert not (tmp_path / "site").exists()


def test_manifest_errors_name_the_folder(tmp_path):
    with pytest.raises(ManifestError, match=str(tmp_path / "nothing")):
        read_manifest(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/manifest.json").write_text('{"client": 3}')
    with pytest.raises(ManifestError, match="corrupt manifest"):
        read_manifest(tmp_path / "bad")
    with pytest.raises(ValueError, match="file-name safe"):
        SampleRecord(id="a/b", case_id="a", source="a")
