"""DICOMweb against a real PACS: Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``)
started by the tests on loopback. ``predict --dicomweb`` stores its SEG back in the study;
``prepare dicom --dicomweb`` prepares a study with its labels; wrong credentials and a PACS
killed in the middle of a transfer are one-line errors that leave nothing behind."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import (
    OBLIQUE,
    box_mask,
    box_volume,
    sorted_by_position,
    tiny_checkpoint,
    write_seg_label,
    write_series,
)
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from orthanc import DICOMWEB_PLUGIN, ORTHANC, PASSWORD, USER, KillingRelay, Orthanc, start_orthanc
from typer.testing import CliRunner

from fedfms.cli import app
from fedfms.data.manifest import read_manifest
from fedfms.dicom.web import PacsError

pytestmark = pytest.mark.skipif(
    not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()),
    reason="Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc and orthanc-dicomweb)",
)
VOLUME = box_volume(depth=7, rows=32, cols=36)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("run") / "best_model", ("prostate",))


@pytest.fixture
def login(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFMS_DICOMWEB_USER", USER)
    monkeypatch.setenv("FEDFMS_DICOMWEB_PASSWORD", PASSWORD)


def _study(server: Orthanc, folder: Path, label: bool = False) -> list:
    datasets = sorted_by_position(write_series(folder, VOLUME, orientation=OBLIQUE))
    if label:
        write_seg_label(folder / "label.dcm", datasets, box_mask(VOLUME), ("prostate",))
    server.upload(sorted(folder.glob("*.dcm")))
    return datasets


def test_predict_stores_the_seg_back_in_the_study(orthanc: Orthanc, checkpoint: Path, login: None, tmp_path: Path) -> None:
    source = _study(orthanc, tmp_path / "scan")
    study, series = source[0].StudyInstanceUID, source[0].SeriesInstanceUID
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(checkpoint), "--dicomweb", orthanc.dicomweb,
                                      "--study", study, "-o", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    pacs = DICOMwebClient(orthanc.dicomweb, session=create_session_from_user_pass(USER, PASSWORD))
    (found,) = pacs.search_for_series(study_instance_uid=study, search_filters={"Modality": "SEG"})
    seg_series = found["0020000E"]["Value"][0]
    (stored,) = pacs.retrieve_series(study, seg_series)
    assert stored.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert stored.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert {r.ReferencedSOPInstanceUID for r in stored.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in source}
    assert stored.SOPInstanceUID == pydicom.dcmread(tmp_path / "out" / f"{series}.seg.dcm").SOPInstanceUID


def test_prepare_downloads_a_study_with_its_labels(orthanc: Orthanc, login: None, tmp_path: Path) -> None:
    source = _study(orthanc, tmp_path / "scan", label=True)
    study = source[0].StudyInstanceUID
    result = CliRunner().invoke(app, ["prepare", "dicom", str(tmp_path / "pacs"), str(tmp_path / "out"), "--client", "site-a",
                                      "--dicomweb", orthanc.dicomweb, "--study", study, "--image-size", "32",
                                      "--mask-size", "16", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "pacs" / study).rglob("*.dcm"))) == len(source) + 1
    manifest = read_manifest(tmp_path / "out" / "site-a")
    assert manifest.class_names == ["prostate"] and len(manifest.samples) == len(source)


def test_wrong_credentials_are_one_line_without_the_secret(orthanc: Orthanc, checkpoint: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFMS_DICOMWEB_USER", USER)
    monkeypatch.setenv("FEDFMS_DICOMWEB_PASSWORD", "not-the-password")
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(checkpoint), "--dicomweb", orthanc.dicomweb,
                                      "--study", "1.2.3", "-o", str(tmp_path / "out")])
    assert isinstance(result.exception, PacsError)
    assert str(result.exception) == f"{orthanc.dicomweb}: search of study 1.2.3 refused (HTTP 401); check the DICOMweb credentials"
    assert "not-the-password" not in result.output


def test_pacs_killed_mid_transfer_is_one_line_and_leaves_nothing(checkpoint: Path, login: None, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Orthanc dies (SIGKILL) while its answers are on the way: the download of the third
    instance breaks off; the error is one line, no mask and no downloaded file is left."""
    server = start_orthanc(tmp_path / "dying")
    try:
        source = _study(server, tmp_path / "scan")
        relay = KillingRelay(server, limit=6_000)  # the searches take ~2 kB, each instance ~2.7 kB
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
        (tmp_path / "tmp").mkdir()
        result = CliRunner().invoke(app, ["predict", "--checkpoint", str(checkpoint), "--dicomweb", relay.dicomweb,
                                          "--study", source[0].StudyInstanceUID, "-o", str(tmp_path / "out"), "--no-progress"])
        relay.close()
    finally:
        server.stop()
    assert server.process.returncode == -signal.SIGKILL and relay.relayed >= 6_000
    assert isinstance(result.exception, PacsError)
    message = str(result.exception)
    assert message.startswith(f"{relay.dicomweb}: download of series {source[0].SeriesInstanceUID} failed, "
                              "the PACS stopped answering (") and "\n" not in message
    assert not list((tmp_path / "tmp").iterdir()) and not (tmp_path / "out").exists()
